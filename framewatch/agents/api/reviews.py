"""Reviews: an operator's verdict on alerts (`true`, `false`: a false positive, or just `reviewed`), one or many at
once, the latest replacing the one before; the events the rules missed; and precision from reviews per rule and per
camera. Each review and missed event records the name of the token it came with (`tokens.py`) and when."""

from __future__ import annotations

import uuid

import asyncpg
from faust.web import Request, Response, View
from prometheus_client import Counter

from framewatch.agents.api.alerts import path_alert_id
from framewatch.agents.api.routes import NotFound, Route, WebContext
from framewatch.agents.api.tokens import ApiTokens
from framewatch.rules.conditions import CONDITIONS
from framewatch.schemas.queries import (
    BadQuery,
    BulkReviewBody,
    MissedEventBody,
    MissedQuery,
    PrecisionQuery,
    ReviewBody,
    Verdict,
    missed_json,
    parse_body,
    precision_tables,
    review_json,
)
from framewatch.schemas.tasks import TaskType

REVIEWS = Counter("framewatch_reviews_total", "Verdicts given to alerts (a changed verdict counts again)",
                  ["task_type", "verdict"])


def caller(context: WebContext, request: Request) -> str:
    """The name of the token the request came with (`guarded` has let it in)."""
    return ApiTokens.of(context.resources.config.framewatch).name_of(request.headers.get("Authorization", ""))


async def give_verdict(context: WebContext, request: Request, alert_ids: list[uuid.UUID],
                       verdict: Verdict) -> list[asyncpg.Record]:
    """The alerts' new verdict, stored and counted; a row per alert this namespace has."""
    rows = await context.resources.alerts.review(alert_ids, verdict, caller(context, request))
    for row in rows:
        REVIEWS.labels(row["task_type"], row["verdict"]).inc()
    return rows


async def review_alert(context: WebContext, view: View, request: Request) -> Response:
    alert_id = path_alert_id(request)
    body = parse_body(ReviewBody, await request.read())
    rows = await give_verdict(context, request, [alert_id], body.verdict)
    if not rows:
        raise NotFound(f"no alert {alert_id}")
    return view.json(review_json(rows[0]))


async def review_alerts(context: WebContext, view: View, request: Request) -> Response:
    """One verdict for many alerts; the ids this namespace has no alert of are listed as `unknown`."""
    body = parse_body(BulkReviewBody, await request.read())
    alert_ids = list(dict.fromkeys(body.alert_ids))
    rows = await give_verdict(context, request, alert_ids, body.verdict)
    reviewed = {row["alert_id"] for row in rows}
    return view.json({"reviewed": [review_json(row) for row in rows],
                      "unknown": [str(alert_id) for alert_id in alert_ids if alert_id not in reviewed]})


def task_rule(context: WebContext, event: MissedEventBody) -> tuple[TaskType, str]:
    """A missed event's task type (as given, else its camera's task's) and rule (the one that task type raises)."""
    task = context.resources.task_settings(event.camera_id)
    task_type = event.task_type or (task.task_type if task is not None else None)
    if task_type is None:
        raise BadQuery(f"task_type: camera {event.camera_id!r} has no task this worker knows; name its task type")
    rule = CONDITIONS[task_type][0]
    if event.rule not in (None, rule):
        raise BadQuery(f"rule: a {task_type.value} task raises {rule!r} alerts, not {event.rule!r}")
    return task_type, rule


async def add_missed_event(context: WebContext, view: View, request: Request) -> Response:
    event = parse_body(MissedEventBody, await request.read())
    task_type, rule = task_rule(context, event)
    row = await context.resources.alerts.add_missed(event.camera_id, task_type, rule, event.captured_at, event.note,
                                                    caller(context, request))
    return view.json(missed_json(row), status=201)


async def missed_events(context: WebContext, view: View, request: Request) -> Response:
    """Missed events, newest first; filters as /api/alerts' (`camera_id`, `task_type`, `rule`, `since`, `until`)."""
    rows = await context.resources.alerts.missed(MissedQuery.from_params(request.query))
    return view.json({"missed": [missed_json(row) for row in rows]})


async def precision(context: WebContext, view: View, request: Request) -> Response:
    """Per rule, and per camera and rule: alerts, reviewed, confirmed, false, missed and precision from reviews, of
    what was captured in the time range (`since`, `until`; filters `camera_id`, `task_type`, `rule`)."""
    alert_counts, missed_counts = await context.resources.alerts.precision(PrecisionQuery.from_params(request.query))
    rules, cameras = precision_tables([dict(r) for r in alert_counts], [dict(r) for r in missed_counts])
    return view.json({"rules": [p.answer() for p in rules], "cameras": [p.answer() for p in cameras]})


ROUTES = [Route("/api/alerts/{alert_id}/review", review_alert, method="post"),
          Route("/api/reviews", review_alerts, method="post"),
          Route("/api/missed", missed_events), Route("/api/missed", add_missed_event, method="post"),
          Route("/api/precision", precision)]
