"""What this worker says of itself: /api/stats (its figures now) and /api/services (the algorithm services it
routes to, as `framewatch services` shows them)."""

from __future__ import annotations

from faust.web import Request, Response, View

from framewatch.agents.api.routes import Route, WebContext


async def stats(context: WebContext, view: View, request: Request) -> Response:
    return view.json(context.snapshot().model_dump())


async def services(context: WebContext, view: View, request: Request) -> Response:
    return view.json({"services": context.resources.scheduler.services_view()})


ROUTES = [Route("/api/stats", stats), Route("/api/services", services)]
