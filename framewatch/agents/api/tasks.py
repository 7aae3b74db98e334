"""/api/tasks/{task_id}: a camera task as fw.tasks has it (what extractors run and workers evaluate), and its zone
changed from the dashboard's editor: validated as `framewatch tasks update` validates a change
(`schemas.tasks.changed`), written to fw.tasks as a `command` (no extractor's config file overwrites it), and
answered once the broker has it. Extractors and workers follow fw.tasks: they use the new zone within seconds.

Task events carry no author: who changed a zone (the token's name) is in this worker's log.

/api/tasks/{task_id}/diff: the task's candidate compared with its live rule, as `framewatch tasks diff ID --json`
prints it (`rules/pairing.py` builds both from the same reads of the alert store).
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka.errors import KafkaError
from faust.types import AppT
from faust.web import Request, Response, View

from framewatch.agents.api.reviews import caller
from framewatch.agents.api.routes import NotFound, Route, WebContext
from framewatch.rules.pairing import NoCandidate, read_difference
from framewatch.schemas.config import Config
from framewatch.schemas.events import TaskEvent, TaskOrigin
from framewatch.schemas.queries import BadQuery, ZoneBody, parse_body, task_json
from framewatch.schemas.tasks import BadTask, CameraTask, changed
from framewatch.schemas.topics import TASKS

log = logging.getLogger("framewatch.web")

CONFIRM_S = 10.0  # for the broker to confirm a change; past it the answer is a 503 (it may yet be written)
CAUGHT_UP_S = 5.0  # for this worker's view of fw.tasks to hold a change it wrote
CAUGHT_UP_POLL_S = 0.05


def published_task(context: WebContext, task_id: str) -> CameraTask:
    """The task as fw.tasks has it (a task only in this worker's config is no extractor's: nothing to change)."""
    task = context.resources.catalog.values.get(task_id)
    if task is None:
        raise NotFound(f"no task {task_id!r} on fw.tasks")
    return task


async def get_task(context: WebContext, view: View, request: Request) -> Response:
    """The task: every setting (`region`, `line`, `line_direction` among them, in normalised coordinates: scale
    them by the still's size), the camera URL's credentials masked."""
    return view.json(task_json(published_task(context, request.match_info["task_id"])))


async def candidate_diff(context: WebContext, view: View, request: Request) -> Response:
    """The difference since the task's candidate started (until its promotion or drop, once it has ended): both
    rules' alerts, those only one raised, the matched pairs with their offsets, each side's precision from reviews;
    `tolerance` (seconds, 1 by default) as `tasks diff --tolerance`. 404 for a task fw.tasks does not have, 409 when
    it has had no candidate since its last change."""
    task_id = request.match_info["task_id"]
    event = context.resources.catalog.events.get(task_id)  # the task's record whole: its candidate, or last change
    if event is None:
        raise NotFound(f"no task {task_id!r} on fw.tasks")
    tolerance_s = tolerance_of(request.query.get("tolerance", "1"))
    try:
        report = await read_difference(context.resources.alerts, event, tolerance_s)
    except NoCandidate as error:
        return view.json({"error": str(error)}, status=409)
    return view.json(report.as_dict())


def tolerance_of(text: str) -> float:
    try:
        tolerance_s = float(text)
    except ValueError:
        raise BadQuery(f"tolerance: not a number of seconds: {text!r}") from None
    if not 0 <= tolerance_s < float("inf"):
        raise BadQuery(f"tolerance: seconds, 0 or more: {text!r}")
    return tolerance_s


async def change_zone(context: WebContext, view: View, request: Request) -> Response:
    """PUT a JSON object with any of `region` ([[x, y], …]: a polygon of at least 3 points, not crossing itself;
    null: the whole frame), `line` ([[x, y], [x, y]]: a line_crossing task's line) and `line_direction` (`in`,
    `out`, `both`; `in` crosses from the left of the line's first→second point to its right, as seen on the
    picture). x runs from the picture's left edge (0) to its right (1), y from its top (0) to its bottom (1).
    Answers the task as it now stands once fw.tasks has it; 400 naming the field (`region: the region crosses
    itself: …`), 404 for a task fw.tasks does not have, 503 when the broker did not confirm in time."""
    task_id = request.match_info["task_id"]
    known = published_task(context, task_id)
    changes = parse_body(ZoneBody, await request.read()).changes()
    try:
        task = changed(known, changes)
    except BadTask as error:
        raise BadQuery(str(error)) from None
    event = TaskEvent(task_id=task_id, task=task, origin=TaskOrigin.COMMAND)
    try:
        await publish(view.app, context.resources.config, event)
    except (KafkaError, TimeoutError) as error:
        log.warning("task %s: its zone change was not confirmed by Kafka: %r", task_id, error)
        return view.json({"error": f"fw.tasks did not confirm the change within {CONFIRM_S:.0f} s; it may yet be "
                                   f"written: GET /api/tasks/{task_id} shows the task as it stands"}, status=503)
    # a warning: the worker logs at that level by default, and this line is the change's only record of its author
    log.warning("task %s: zone changed by %s: %s", task_id, caller(context, request), changes)
    await caught_up(context, task_id, task)
    return view.json(task_json(task))


async def publish(app: AppT, config: Config, event: TaskEvent) -> None:
    """The task onto fw.tasks through the worker's own producer (every in-sync replica acknowledges), keyed as
    every writer of fw.tasks keys it; returns once the broker has it. Not `Topology.emit`: an HTTP handler has no
    source record to keep unacked while a refused record is sent again, so a refusal is the caller's answer."""
    producer = app.producer
    await producer.maybe_start()
    delivered = await producer.send(config.topic(TASKS.name), TASKS.key_of(event), event.to_bytes(), partition=None,
                                    timestamp=event.emitted_at / 1000, headers=None)
    await asyncio.wait_for(asyncio.shield(delivered), CONFIRM_S)  # shielded: the producer settles its own future


async def caught_up(context: WebContext, task_id: str, task: CameraTask) -> None:
    """Returns once this worker's view of fw.tasks holds `task` (at most `CAUGHT_UP_S`), so what is read next
    here (the dashboard's GET, the base of the next change) is what was saved."""
    deadline = time.monotonic() + CAUGHT_UP_S
    while context.resources.catalog.values.get(task_id) != task and time.monotonic() < deadline:
        await asyncio.sleep(CAUGHT_UP_POLL_S)


ROUTES = [Route("/api/tasks/{task_id}", get_task), Route("/api/tasks/{task_id}/zone", change_zone, method="put"),
          Route("/api/tasks/{task_id}/diff", candidate_diff)]
