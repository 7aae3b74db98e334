"""Operator tooling: topic inspection and the demo run. Nothing in the stream imports it."""
