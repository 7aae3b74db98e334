"""/api/alerts: the stored alerts, newest first, a page at a time (a keyset cursor), each with its clip's status;
one alert by id; the stable addresses of its image and of its clip."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from faust.web import Request, Response, View

from framewatch.agents.api.routes import NotFound, Route, WebContext
from framewatch.schemas.queries import CLIP_PATH, AlertQuery, BadQuery, ClipAnswer, Cursor, alert_json, clip_answer


async def alerts(context: WebContext, view: View, request: Request) -> Response:
    query = AlertQuery.from_params(request.query)
    rows = await context.resources.alerts.query(query)
    now = datetime.now(UTC)
    return view.json({"alerts": [answer(context, r, now) for r in rows], "next_cursor": next_cursor(query, rows)})


def next_cursor(query: AlertQuery, rows: Sequence[Mapping[str, Any]]) -> str | None:
    """Where the next page starts after a full one; None after a page that was not full (the last)."""
    if len(rows) != query.limit:
        return None
    last = rows[-1]
    return Cursor(captured_at=last["captured_at"], alert_id=last["alert_id"]).encode()


async def alert(context: WebContext, view: View, request: Request) -> Response:
    row = await stored_alert(context, request)
    return view.json(answer(context, row, datetime.now(UTC)))


async def alert_image(context: WebContext, view: View, request: Request) -> Response:
    """The alert image's stable address: a redirect to a presigned URL made now (those expire)."""
    row = await stored_alert(context, request)
    return view.bytes(b"", status=302, headers={"Location": context.presign(row["image_key"])})


async def alert_clip(context: WebContext, view: View, request: Request) -> Response:
    """The alert clip's stable address: a redirect to a presigned URL made now once the clip is there; before that
    (or when there will be none) a 404 naming its status and the reason."""
    row = await stored_alert(context, request)
    clip = clip_of(context, row, datetime.now(UTC))
    if clip.presigned_url is not None:
        return view.bytes(b"", status=302, headers={"Location": clip.presigned_url})
    what = "is not ready yet" if clip.reason is None else f"has none: {clip.reason}"
    return view.json({"error": f"the clip of alert {row['alert_id']} {what}", "status": clip.status.value,
                      "reason": clip.reason}, status=404)


def answer(context: WebContext, row: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """An alert as the API shows it, its image and clip URLs presigned now."""
    return alert_json(row, context.presign(row["image_key"]), clip_of(context, row, now))


def clip_of(context: WebContext, row: Mapping[str, Any], now: datetime) -> ClipAnswer:
    """The alert's clip, judged against its task's settings as this worker knows them."""
    return clip_answer(row, context.resources.task_settings(row["task_id"]), now, context.presign)


def path_alert_id(request: Request) -> uuid.UUID:
    """The alert id the path names."""
    alert_id = request.match_info["alert_id"]
    try:
        return uuid.UUID(alert_id)
    except ValueError:
        raise BadQuery(f"alert id {alert_id!r} is not a UUID") from None


async def stored_alert(context: WebContext, request: Request) -> Mapping[str, Any]:
    """The alert the path names."""
    alert_id = path_alert_id(request)
    row = await context.resources.alerts.get(str(alert_id))
    if row is None:
        raise NotFound(f"no alert {alert_id}")
    return row


ROUTES = [Route("/api/alerts", alerts), Route("/api/alerts/{alert_id}", alert),
          Route("/api/alerts/{alert_id}/image", alert_image), Route(CLIP_PATH, alert_clip)]
