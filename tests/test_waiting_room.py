"""The waiting room's policy without sockets or an event loop: latest wins per live task, a lossless task's results
leave in order, lapsed and unserved frames leave, failed frames come back first, batches, pressure."""

from __future__ import annotations

from framewatch.agents.inference.waiting import Ends, Result, TaskPressure, Waiting, WaitingRoom
from framewatch.schemas.events import DetectionEvent, FrameEvent
from framewatch.schemas.tasks import TaskType
from tests.test_scheduler import camera_frame, recorded_frames

NOW = 1000.0


async def never_called(result: Result) -> None:
    raise AssertionError("the room hands nothing on itself")


class Ownership:
    """A partition's ownership, revocable."""

    def __init__(self) -> None:
        self.revoked = False

    def __call__(self) -> bool:
        return not self.revoked


def waiting(frame: FrameEvent, queued_at: float = NOW, owned: Ownership | None = None) -> Waiting:
    return Waiting(frame, never_called, queued_at, owned or Ownership())


def submitted(room: WaitingRoom, *items: Waiting) -> Ends:
    """The items in, as the scheduler puts them in when the room has space."""
    ends = Ends()
    for item in items:
        change = room.arrive(item)
        if not change.ended:
            change = room.submit(item)
        ends.ended += change.ended
        ends.released += change.released
    return ends


def reasons(results: list[Result]) -> list[tuple[str, str]]:
    return [("inferred", "") if isinstance(r, DetectionEvent) else (r.outcome.value, r.reason) for r in results]


def released(ends: Ends) -> list[str]:
    return [item.frame.frame_id for item, _ in ends.released]


def inferred(item: Waiting) -> DetectionEvent:
    return DetectionEvent(frame=item.frame, service_id="s", inference_ms=1.0, detections=[])


def test_a_newer_live_frame_replaces_the_waiting_one_and_keeps_its_turn() -> None:
    room = WaitingRoom(max_waiting=10, max_age_ms=2000)
    a1, b1, a2 = waiting(camera_frame("a")), waiting(camera_frame("b")), waiting(camera_frame("a"))
    ends = submitted(room, a1, b1, a2)
    assert reasons(ends.ended) == [("dropped", "superseded")] and released(ends) == [a1.frame.frame_id]
    assert list(room.heads()) == [a2, b1] and room.queued == 2
    assert room.take_pressure()["a"] == TaskPressure(received=2, dropped=1, ended=1)
    assert room.take_pressure() == {}


def test_a_live_frame_older_than_the_waiting_one_is_the_one_dropped() -> None:
    room = WaitingRoom(max_waiting=10, max_age_ms=2000)
    newer, older = waiting(camera_frame("a", age_ms=10)), waiting(camera_frame("a", age_ms=500))
    ends = submitted(room, newer, older)
    assert released(ends) == [older.frame.frame_id] and list(room.heads()) == [newer]


def test_a_stale_live_frame_is_dropped_on_arrival_and_waits_for_no_space() -> None:
    room = WaitingRoom(max_waiting=1, max_age_ms=2000)
    submitted(room, waiting(camera_frame("a")))
    stale = waiting(camera_frame("b", age_ms=5000))
    assert reasons(room.arrive(stale).ended) == [("dropped", "stale")] and room.queued == 1
    assert room.must_wait(waiting(camera_frame("b")))  # full, and b has nothing waiting to replace
    assert not room.must_wait(waiting(camera_frame("a")))  # it replaces a's frame
    assert room.must_wait(waiting(recorded_frames("r", 1)[0]))  # a lossless frame never replaces one


def test_lossless_results_are_released_in_the_order_their_frames_came() -> None:
    room = WaitingRoom(max_waiting=10, max_age_ms=2000)
    first, second, third = (waiting(f) for f in recorded_frames("r", 3))
    submitted(room, first, second, third)
    assert room.queued == 3  # however old, nothing dropped
    room.send([first, second, third], "s")
    late = room.end(third, inferred(third))
    assert reasons(late.ended) == [("inferred", "")] and late.released == []
    assert released(room.end(first, inferred(first))) == [first.frame.frame_id]
    assert released(room.end(second, inferred(second))) == [second.frame.frame_id, third.frame.frame_id]
    assert room.in_order == {}


def test_a_revoked_frame_holds_no_later_result_back_and_its_own_goes_unheld() -> None:
    room = WaitingRoom(max_waiting=10, max_age_ms=2000)
    before = Ownership()
    at_service, again = waiting(recorded_frames("r", 1)[0], owned=before), waiting(recorded_frames("r", 1)[0])
    submitted(room, at_service, again)
    room.send([at_service, again], "s")
    before.revoked = True
    assert released(room.end(again, inferred(again))) == [again.frame.frame_id]
    assert released(room.end(at_service, inferred(at_service))) == [at_service.frame.frame_id]  # discarded later
    assert room.in_order == {}


def test_expiry_ends_stale_revoked_and_unserved_frames() -> None:
    room = WaitingRoom(max_waiting=10, max_age_ms=2000)
    revocable = Ownership()
    gone_stale = waiting(camera_frame("a", age_ms=5000))
    revoked = waiting(recorded_frames("r", 1)[0], owned=revocable)
    unserved = waiting(camera_frame("b").model_copy(update={"task_type": TaskType.SMOKING}), queued_at=NOW - 6)
    patient = waiting(camera_frame("c").model_copy(update={"task_type": TaskType.SMOKING}), queued_at=NOW - 1)
    for item in (gone_stale, revoked, unserved, patient):
        room.submit(item)  # not through `arrive`: `gone_stale` grew old while it waited
    revocable.revoked = True
    ends = room.expire(NOW, served={TaskType.AREA_INTRUSION})
    assert reasons(ends.ended) == [("dropped", "stale"), ("dropped", "revoked"), ("failed", "no_service")]
    assert list(room.heads()) == [patient] and room.in_order == {}
    assert {task: p.dropped for task, p in room.take_pressure().items()} == {"a": 1, "r": 0, "b": 0}


def test_a_lapsed_head_leaves_when_the_dispatcher_meets_it() -> None:
    room = WaitingRoom(max_waiting=10, max_age_ms=2000)
    ownership = Ownership()
    item = waiting(camera_frame("a"), owned=ownership)
    submitted(room, item)
    assert not room.is_lapsed(item)
    ownership.revoked = True
    assert room.is_lapsed(item) and reasons(room.lapse(item).ended) == [("dropped", "revoked")]
    assert room.queued == 0


def test_a_failed_frame_comes_back_first_or_ends() -> None:
    room = WaitingRoom(max_waiting=10, max_age_ms=2000)
    retried, other = waiting(camera_frame("a")), waiting(camera_frame("b"))
    submitted(room, retried, other)
    room.send([retried], "bad")
    assert room.fail(retried, "timeout", elsewhere=True).ended == []
    assert list(room.heads()) == [retried, other] and retried.tried == {"bad"}

    room.send([retried], "good")
    assert reasons(room.fail(retried, "timeout", elsewhere=False).ended) == [("failed", "timeout")]

    superseded, newer = waiting(camera_frame("c")), waiting(camera_frame("c"))
    submitted(room, superseded)
    room.send([superseded], "bad")
    submitted(room, newer)
    assert reasons(room.fail(superseded, "timeout", elsewhere=True).ended) == [("dropped", "superseded")]


def test_a_batch_takes_frames_of_the_first_ones_task_type_in_turn() -> None:
    room = WaitingRoom(max_waiting=10, max_age_ms=2000)
    revocable = Ownership()
    smoking = camera_frame("s").model_copy(update={"task_type": TaskType.SMOKING})
    first, failed_here, revoked, other_type, second, third, fourth = (
        waiting(camera_frame("a")), waiting(camera_frame("b")), waiting(camera_frame("c"), owned=revocable),
        waiting(smoking), waiting(camera_frame("d")), waiting(camera_frame("e")), waiting(camera_frame("f")))
    submitted(room, first, failed_here, revoked, other_type, second, third, fourth)
    failed_here.tried.add("gpu")
    revocable.revoked = True
    batch = room.batch(first, "gpu", size=3)
    assert batch == [first, second, third]
    assert room.batch(first, "gpu", size=1) == [first]
    room.send(batch, "gpu")
    assert list(room.heads()) == [failed_here, revoked, other_type, fourth] and room.queued == 4


def test_a_task_with_frames_left_waits_for_its_next_turn() -> None:
    room = WaitingRoom(max_waiting=10, max_age_ms=2000)
    r1, r2 = (waiting(f) for f in recorded_frames("r", 2))
    live = waiting(camera_frame("live"))
    submitted(room, r1, r2, live)
    room.send([r1], "s")
    assert list(room.heads()) == [live, r2]

