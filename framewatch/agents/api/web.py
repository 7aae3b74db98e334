"""The worker's HTTP surface: Prometheus metrics, the live stats line, the algorithm services, the alert query
API, reviews and the dashboard (`/`). With `framewatch.api_token` or `api_tokens` set, every /api/ path wants
`Authorization: Bearer <token>` (`tokens.py`); /metrics stays open for Prometheus. The handlers are in one module
per resource; this one puts their routes on the app, each /api/ handler behind `guarded`."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable

import faust
from faust.web import Request, Response, View
from prometheus_client import Counter

from framewatch.agents.api import alerts, cameras, counts, public, reviews, tasks, worker
from framewatch.agents.api.routes import NotFound, Route, WebContext
from framewatch.agents.api.tokens import ApiTokens, WrongToken
from framewatch.agents.resources import Resources
from framewatch.clients.database import DatabaseUnavailable
from framewatch.schemas.queries import BadQuery
from framewatch.schemas.stats import WorkerStats

log = logging.getLogger("framewatch.web")

API_REQUESTS = Counter("framewatch_api_requests_total", "Query API requests", ["path", "status"])

API_ROUTES = [*worker.ROUTES, *alerts.ROUTES, *reviews.ROUTES, *cameras.ROUTES, *counts.ROUTES, *tasks.ROUTES]

ViewMethod = Callable[..., Awaitable[Response]]  # a View's method: (view, request, **path parts)


def attach_web(app: faust.App, resources: Resources, snapshot: Callable[[], WorkerStats],
               readiness: Callable[[], Awaitable[dict[str, bool]]]) -> None:
    context = WebContext(resources, snapshot, readiness)
    tokens = ApiTokens.of(resources.config.framewatch)
    bound = [(route, unguarded(route, context)) for route in public.ROUTES]
    bound += [(route, guarded(route, context, tokens)) for route in API_ROUTES]
    names: dict[str, str] = {}  # a path's view is named after its first handler
    views: dict[str, dict[str, ViewMethod]] = defaultdict(dict)
    for route, method in bound:
        names.setdefault(route.path, route.handler.__name__)
        views[route.path][route.method] = method
    for path, methods in views.items():
        app.page(path, name=names[path])(type(names[path], (View,), methods))


def unguarded(route: Route, context: WebContext) -> ViewMethod:
    async def answer(view: View, request: Request, **_: str) -> Response:  # path parts are in match_info
        return await route.handler(context, view, request)
    return answer


def guarded(route: Route, context: WebContext, tokens: ApiTokens) -> ViewMethod:
    """Bearer-token check, bad input as 400, what the path names missing as 404, the database down as 503, and a
    metric per answer."""
    async def answer(view: View, request: Request, **_: str) -> Response:  # path parts are in match_info
        try:
            tokens.name_of(request.headers.get("Authorization", ""))
            response = await route.handler(context, view, request)
        except WrongToken as error:
            response = view.json({"error": str(error)}, status=401)
        except BadQuery as error:
            response = view.json({"error": str(error)}, status=400)
        except NotFound as error:
            response = view.json({"error": str(error)}, status=404)
        except DatabaseUnavailable as error:
            log.warning("%s: %s", route.path, error)  # the detail names hosts and users: the log, not the answer
            response = view.json({"error": "the alert store is unavailable; try again shortly"}, status=503)
        API_REQUESTS.labels(route.path, str(response.status)).inc()
        return response
    return answer
