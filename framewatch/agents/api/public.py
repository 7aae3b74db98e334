"""The paths that answer without the token: the dashboard page (it calls the API with the token from its own URL),
the liveness and readiness probes, and Prometheus' /metrics."""

from __future__ import annotations

from importlib.resources import files

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from framewatch.agents.api.routes import Route, WebContext

DASHBOARD = files("framewatch.agents.api").joinpath("static", "dashboard.html").read_bytes()


async def dashboard(context: WebContext, view: View, request: Request) -> Response:
    """Plain HTML and a little JavaScript over the API; open it as /?token=… when a token is set."""
    return view.bytes(DASHBOARD, content_type="text/html")


async def alive(context: WebContext, view: View, request: Request) -> Response:
    """The process answers (a liveness probe): nothing but that."""
    return view.json({"alive": True})


async def ready(context: WebContext, view: View, request: Request) -> Response:
    """200 when ready for traffic, else 503; each check by name (a readiness probe)."""
    checks = await context.readiness()
    return view.json({"ready": all(checks.values()), **checks}, status=200 if all(checks.values()) else 503)


async def metrics(context: WebContext, view: View, request: Request) -> Response:
    return view.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])


ROUTES = [Route("/", dashboard), Route("/healthz", alive), Route("/readyz", ready), Route("/metrics", metrics)]
