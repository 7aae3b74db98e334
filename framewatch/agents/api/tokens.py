"""Who calls the API: the bearer tokens a worker lets in, each with the name a review records (`[framewatch]
api_tokens`: name = token; the single `api_token` is named "api"). Without any token every caller is let in, as
"anonymous"."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from framewatch.errors import FramewatchError
from framewatch.schemas.config import ANONYMOUS, SINGLE_TOKEN_NAME, FramewatchSettings


class WrongToken(FramewatchError):
    """The request's bearer token is missing or not one the worker knows (a 401)."""


@dataclass(frozen=True)
class ApiTokens:
    names: dict[str, str]  # token -> the name of its holder

    @classmethod
    def of(cls, settings: FramewatchSettings) -> ApiTokens:
        names = {token.get_secret_value(): name for name, token in settings.api_tokens.items()}
        if single := settings.api_token.get_secret_value():
            names.setdefault(single, SINGLE_TOKEN_NAME)
        return cls(names)

    def name_of(self, authorization: str) -> str:
        """The name of the token an `Authorization` header carries; WrongToken when it carries none the worker
        knows (every token is compared, in constant time)."""
        if not self.names:
            return ANONYMOUS
        given = authorization.encode()
        found = [name for token, name in self.names.items() if hmac.compare_digest(given, f"Bearer {token}".encode())]
        if not found:
            raise WrongToken("missing or wrong bearer token")
        return found[0]
