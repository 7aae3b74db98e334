"""/api/alerts: the stored alerts, newest first, a page at a time (a keyset cursor); one alert by id; the stable
address of its image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from faust.web import Request, Response, View

from framewatch.agents.api.routes import NotFound, Route, WebContext
from framewatch.schemas.queries import AlertQuery, BadQuery, Cursor, alert_json


async def alerts(context: WebContext, view: View, request: Request) -> Response:
    query = AlertQuery.from_params(request.query)
    rows = await context.resources.alerts.query(query)
    return view.json({"alerts": [alert_json(r, context.presign(r["image_key"])) for r in rows],
                      "next_cursor": next_cursor(query, rows)})


def next_cursor(query: AlertQuery, rows: Sequence[Mapping[str, Any]]) -> str | None:
    """Where the next page starts after a full one; None after a page that was not full (the last)."""
    if len(rows) != query.limit:
        return None
    last = rows[-1]
    return Cursor(captured_at=last["captured_at"], alert_id=last["alert_id"]).encode()


async def alert(context: WebContext, view: View, request: Request) -> Response:
    row = await stored_alert(context, request)
    return view.json(alert_json(row, context.presign(row["image_key"])))


async def alert_image(context: WebContext, view: View, request: Request) -> Response:
    """The alert image's stable address: a redirect to a presigned URL made now (those expire)."""
    row = await stored_alert(context, request)
    return view.bytes(b"", status=302, headers={"Location": context.presign(row["image_key"])})


async def stored_alert(context: WebContext, request: Request) -> Mapping[str, Any]:
    """The alert the path names."""
    alert_id = request.match_info["alert_id"]
    try:
        row = await context.resources.alerts.get(alert_id)
    except ValueError:
        raise BadQuery(f"alert id {alert_id!r} is not a UUID") from None
    if row is None:
        raise NotFound(f"no alert {alert_id}")
    return row


ROUTES = [Route("/api/alerts", alerts), Route("/api/alerts/{alert_id}", alert),
          Route("/api/alerts/{alert_id}/image", alert_image)]
