"""The alert path after the rules: the alert image copied to its alert key (`relocation`), alerts written to
PostgreSQL in batches, once each (`sink`), and stored alerts published to the message queue in Kafka
transactions, once each (`publisher`)."""
