"""The root of the errors framewatch raises on purpose, and the one way a pydantic error becomes a message.

Every error a person can act on (a bad config line, a peer that is away, a record that does not decode) is a
`FramewatchError`, so a caller that reports them (the CLI) catches one class. Two kinds matter to callers:
`BadInput` (also a `ValueError`) and `Unreachable` (also a `RuntimeError`); the stages' own errors derive from them
or, for a process or peer that failed otherwise, from `FramewatchError` and `RuntimeError`.
"""

from __future__ import annotations

from pydantic import ValidationError


class FramewatchError(Exception):
    """An error framewatch can name and explain: bad input, a peer away, a setting that cannot work."""


class BadInput(FramewatchError, ValueError):
    """Input framewatch cannot use (a config line, a query parameter, a record, a stored state); the message
    names what was wrong. The CLI exits with status 2."""


class Unreachable(FramewatchError, RuntimeError):
    """A peer framewatch needs (Kafka, PostgreSQL, a worker) cannot be reached now; trying later may work. The
    CLI exits with status 3."""


def describe(error: ValidationError, whole: str = "") -> str:
    """`field.sub: message; …`, pydantic's `Value error, ` prefix dropped; `whole` names a problem of the whole."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or whole}: {e['msg'].removeprefix('Value error, ')}"
                     for e in error.errors())
