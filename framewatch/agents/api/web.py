"""The worker's HTTP surface: Prometheus metrics, the live stats line, the algorithm services, the alert query
API and the dashboard (`/`). With `framewatch.api_token` set, every /api/ path wants `Authorization: Bearer <token>`;
/metrics stays open for Prometheus."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib.resources import files
from typing import Any

import faust
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from framewatch.agents.app import Resources
from framewatch.clients.database import DatabaseUnavailable
from framewatch.schemas.queries import (
    AlertQuery,
    BadQuery,
    CountQuery,
    Cursor,
    alert_json,
    count_json,
)
from framewatch.schemas.stats import WorkerStats

log = logging.getLogger("framewatch.web")

API_REQUESTS = Counter("framewatch_api_requests_total", "Query API requests", ["path", "status"])


Handler = Callable[[View, Request], Awaitable[Response]]


def guarded(path: str, token: str, handler: Handler) -> Handler:
    """Bearer-token check, bad input as 400, the database down as 503, and a metric per answer."""
    async def answer(view: View, request: Request, **_: str) -> Response:  # path parts are in match_info
        given = request.headers.get("Authorization", "")
        if token and not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            response = view.json({"error": "missing or wrong bearer token"}, status=401)
        else:
            try:
                response = await handler(view, request)
            except BadQuery as error:
                response = view.json({"error": str(error)}, status=400)
            except DatabaseUnavailable as error:
                log.warning("%s: %s", path, error)  # the detail names hosts and users: the log, not the answer
                response = view.json({"error": "the alert store is unavailable; try again shortly"}, status=503)
        API_REQUESTS.labels(path, str(response.status)).inc()
        return response
    return answer


def attach_web(app: faust.App, resources: Resources, snapshot: Callable[[], WorkerStats],
               readiness: Callable[[], Awaitable[dict[str, bool]]]) -> None:
    token = resources.config.framewatch.api_token.get_secret_value()
    expiry_s = resources.config.ai_analysis.presign_expiry_sec

    dashboard = files("framewatch.agents.api").joinpath("static", "dashboard.html").read_bytes()

    @app.page("/")
    class Dashboard(View):
        """Plain HTML and a little JavaScript over the API; open it as /?token=… when a token is set."""

        async def get(self, request: Request) -> Response:
            return self.bytes(dashboard, content_type="text/html")

    @app.page("/healthz")
    class Alive(View):
        """The process answers (a liveness probe): no token, nothing but that."""

        async def get(self, request: Request) -> Response:
            return self.json({"alive": True})

    @app.page("/readyz")
    class Ready(View):
        """200 when ready for traffic, else 503; each check by name (a readiness probe: no token)."""

        async def get(self, request: Request) -> Response:
            checks = await readiness()
            return self.json({"ready": all(checks.values()), **checks}, status=200 if all(checks.values()) else 503)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    async def stats(view: View, request: Request) -> Response:
        return view.json(snapshot().model_dump())

    async def services(view: View, request: Request) -> Response:
        return view.json({"services": resources.scheduler.services_view()})

    async def alerts(view: View, request: Request) -> Response:
        query = AlertQuery.from_params(request.query)
        rows = await resources.alerts.query(query)
        last = rows[-1] if len(rows) == query.limit else None
        cursor = Cursor(captured_at=last["captured_at"], alert_id=last["alert_id"]).encode() if last else None
        return view.json({"alerts": [alert_json(r, resources.store.presign(r["image_key"], expiry_s)) for r in rows],
                          "next_cursor": cursor})

    async def stored_alert(request: Request) -> Mapping[str, Any] | None:
        alert_id = request.match_info["alert_id"]
        try:
            return await resources.alerts.get(alert_id)
        except ValueError:
            raise BadQuery(f"alert id {alert_id!r} is not a UUID") from None

    async def alert(view: View, request: Request) -> Response:
        if (row := await stored_alert(request)) is None:
            return view.json({"error": f"no alert {request.match_info['alert_id']}"}, status=404)
        return view.json(alert_json(row, resources.store.presign(row["image_key"], expiry_s)))

    async def alert_image(view: View, request: Request) -> Response:
        """The alert image's stable address: a redirect to a presigned URL made now (those expire)."""
        if (row := await stored_alert(request)) is None:
            return view.json({"error": f"no alert {request.match_info['alert_id']}"}, status=404)
        return view.bytes(b"", status=302, headers={"Location": resources.store.presign(row["image_key"], expiry_s)})

    async def cameras(view: View, request: Request) -> Response:
        now_ms = time.time() * 1000
        tasks = {**{t.id: t for t in resources.config.frame_extractor.tasks}, **resources.catalog.values}
        by_camera: dict[str, dict[str, Any]] = {
            t.id: {"camera_id": t.id, "task_type": t.task_type.value, "enabled": t.enabled, "alerts": 0}
            for t in tasks.values()}
        for camera_id, status in resources.camera_states.values.items():
            by_camera.setdefault(camera_id, {"camera_id": camera_id, "alerts": 0}).update(
                state=status.state.value, extractor=status.extractor, fps_in=status.fps_in, fps_out=status.fps_out,
                interval_ms=status.interval_ms, reconnects=status.reconnects, last_error=status.last_error,
                status_age_s=round((now_ms - status.on_broker_clock(status.emitted_at)) / 1000, 1),
                clock_skew_s=None if status.clock_skew_ms is None else status.clock_skew_ms / 1000)
        for camera_id, seen in resources.scheduler.cameras.items():
            by_camera.setdefault(camera_id, {"camera_id": camera_id, "alerts": 0}).update(
                frames=seen.frames, inferred=seen.inferred, freshness=seen.freshness.value,
                last_frame_age_s=round((now_ms - seen.last_captured_at) / 1000, 1))
        for row in await resources.alerts.cameras():
            entry = by_camera.setdefault(row["camera_id"], {"camera_id": row["camera_id"], "alerts": 0})
            entry.update(task_type=row["task_type"], last_alert_at=row["last_alert_at"].isoformat())
            entry["alerts"] += row["alerts"]
        return view.json({"cameras": sorted(by_camera.values(), key=lambda c: c["camera_id"])})

    async def counts(view: View, request: Request) -> Response:
        rows = await resources.alerts.counts(CountQuery.from_params(request.query))
        return view.json({"counts": [count_json(r) for r in rows]})

    routes: dict[str, Handler] = {"/api/stats": stats, "/api/services": services, "/api/alerts": alerts,
                                  "/api/alerts/{alert_id}": alert, "/api/alerts/{alert_id}/image": alert_image,
                                  "/api/cameras": cameras, "/api/counts": counts}
    for path, handler in routes.items():
        app.page(path, name=handler.__name__)(guarded(path, token, handler))
