"""Clients of the three stores every process shares: Kafka (`bus`), the S3 object store (`objectstore`) and
PostgreSQL (`database`). The camera edge, the worker and the operator commands all use them, so they sit below
`streams/` and `agents/`: schemas ← clients ← streams ← agents."""
