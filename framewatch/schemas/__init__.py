"""The contracts: configuration, event records, topics, the algorithm-service HTTP API and the SQL schema."""
