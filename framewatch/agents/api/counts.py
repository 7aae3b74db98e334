"""/api/counts: the closed minutes of one counting task, newest first (the dashboard's charts)."""

from __future__ import annotations

from faust.web import Request, Response, View

from framewatch.agents.api.routes import Route, WebContext
from framewatch.schemas.queries import CountQuery, count_json


async def counts(context: WebContext, view: View, request: Request) -> Response:
    rows = await context.resources.alerts.counts(CountQuery.from_params(request.query))
    return view.json({"counts": [count_json(r) for r in rows]})


ROUTES = [Route("/api/counts", counts)]
