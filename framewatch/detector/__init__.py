"""The reference algorithm service: a separately deployed HTTP process, not part of the stream."""
