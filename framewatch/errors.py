"""The root of the errors framewatch raises on purpose, and the one way a pydantic error becomes a message.

Every error a person can act on (a bad config line, a peer that is away, a record that does not decode) is a
`FramewatchError`, so a caller that reports them (the CLI) catches one class; each also keeps its natural base
(`ValueError` for bad input, `RuntimeError` for a peer or a process), so callers that think in those terms still can.
"""

from __future__ import annotations

from pydantic import ValidationError


class FramewatchError(Exception):
    """An error framewatch can name and explain: bad input, a peer away, a setting that cannot work."""


def describe(error: ValidationError, whole: str = "") -> str:
    """`field.sub: message; …`, pydantic's `Value error, ` prefix dropped; `whole` names a problem of the whole."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or whole}: {e['msg'].removeprefix('Value error, ')}"
                     for e in error.errors())
