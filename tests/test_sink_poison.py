"""A record PostgreSQL refuses for its data is dead-lettered with the reason; the rest of its batch is stored and
storage goes on (against the real database)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from framewatch.agents.alerts.sink import AlertSink
from framewatch.clients.database import AlertStore
from framewatch.schemas.config import Config
from framewatch.schemas.events import AlertEvent, CountWindow, Event, FrameEvent
from framewatch.schemas.tasks import TaskType
from tests.test_events import frame


def alert(i: int, namespace: str, evidence: dict[str, object] | None = None) -> AlertEvent:
    f = frame(seq=i).model_copy(update={"camera_id": f"{namespace}-cam", "task_id": f"{namespace}-cam"})
    f = f.model_copy(update={"frame_id": FrameEvent.make_id(f.camera_id, f.captured_at, i)})
    return AlertEvent(alert_id=AlertEvent.make_id(f.frame_id, "area_intrusion"), frame=f, rule="area_intrusion",
                      evidence=evidence or {"i": i}, image_key=f"alerts/{i}.jpg")


def window(task_id: str, minute: int) -> CountWindow:
    return CountWindow(task_id=task_id, camera_id="cam", task_type=TaskType.PEOPLE_COUNTING,
                       window_start=1_700_000_040_000 + minute * 60_000, samples=3, people_max=2, people_mean=1.0,
                       crossed_in=0, crossed_out=0)


class Letters:
    def __init__(self) -> None:
        self.received: list[tuple[Event, str]] = []

    async def __call__(self, record: Event, reason: str) -> None:
        self.received.append((record, reason))


@pytest.fixture
async def store(stack_config: Config) -> AsyncIterator[AlertStore]:
    alerts = AlertStore.of(stack_config)
    await alerts.connect()
    yield alerts
    await alerts.close()


async def test_a_poison_alert_is_dead_lettered_and_the_rest_of_its_batch_stored(store: AlertStore,
                                                                                namespace: str) -> None:
    letters = Letters()
    sink = AlertSink(store, letters)
    batch = [alert(i, namespace) for i in range(5)]
    batch[2] = alert(2, namespace, evidence={"note": "nul \u0000 inside"})  # jsonb cannot hold U+0000
    stored = await sink.store_batch(batch)
    assert [a.alert_id for a in stored] == [a.alert_id for i, a in enumerate(batch) if i != 2]
    ((record, reason),) = letters.received
    assert record.event_id == batch[2].alert_id and "refused by PostgreSQL" in reason and "0000" in reason
    for a in stored:
        assert await store.get(a.alert_id) is not None
    assert await store.get(batch[2].alert_id) is None

    later = [alert(i, namespace) for i in range(5, 8)]
    assert await sink.store_batch(later) == later, "storage goes on after a poison alert"


async def test_a_poison_count_window_is_dead_lettered_and_the_others_stored(store: AlertStore,
                                                                            namespace: str) -> None:
    letters = Letters()
    sink = AlertSink(store, letters)
    windows = [window(f"{namespace}-a", 0), window(f"{namespace}-\u0000", 1), window(f"{namespace}-b", 2)]
    await sink.store_counts(windows)
    assert [r.event_id for r, _ in letters.received] == [windows[1].event_id]
    async with store.pool.acquire() as connection:
        tasks = {row["task_id"] for row in await connection.fetch(
            "SELECT task_id FROM counts WHERE task_id LIKE $1", f"{namespace}-%")}
    assert tasks == {f"{namespace}-a", f"{namespace}-b"}
