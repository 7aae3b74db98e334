"""What a handler of the worker's web surface is: a module-level function of the `WebContext`, the Faust view
answering and the request, named with its path (and method) by a `Route`. Each resource's module lists its routes;
`web.attach_web` puts them on the app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from faust.web import Request, Response, View

from framewatch.agents.resources import Resources
from framewatch.errors import FramewatchError
from framewatch.schemas.stats import WorkerStats


class NotFound(FramewatchError):
    """What the path names does not exist (a 404); the message says what was looked for."""


@dataclass(frozen=True)
class WebContext:
    """What the handlers read: the worker's resources, its figures now and its readiness checks."""

    resources: Resources
    snapshot: Callable[[], WorkerStats]
    readiness: Callable[[], Awaitable[dict[str, bool]]]

    def presign(self, object_key: str) -> str:
        """A URL of an object in the store, valid for `presign_expiry_sec` from now."""
        return self.resources.store.presign(object_key, self.resources.config.ai_analysis.presign_expiry_sec)


Handler = Callable[[WebContext, View, Request], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    path: str  # aiohttp's pattern: `{name}` parts are in request.match_info
    handler: Handler
    method: str = "get"
