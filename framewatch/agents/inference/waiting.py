"""The waiting room: frames waiting for an algorithm service, a line per task (camera stream), and how they end.

A live task (`Freshness.LATEST`) has at most one frame waiting: a newer frame replaces it in place (the task keeps
its turn) and a frame older than `max_age_ms` is dropped. A lossless task (`Freshness.ALL`) keeps every frame, and
its results leave in the order its frames came: a result is held until every earlier frame of its task has ended
or left this worker. Synchronous and without I/O: each change returns what it ended (`Ends`), for the scheduler to
hand on and count. The room also counts, per task, the frames that arrived, were dropped and ended (the pressure
the extractors follow).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass, field

from framewatch.schemas.events import DetectionEvent, FrameEvent, FrameOutcome, Outcome
from framewatch.schemas.tasks import Freshness, TaskType

WAIT_FOR_SERVICE_S = 5.0

Result = DetectionEvent | FrameOutcome
Done = Callable[[Result], Awaitable[None]]
Owned = Callable[[], bool]  # whether this worker still owns the partition the frame was read from


def always_owned() -> bool:
    return True


@dataclass(eq=False)
class Waiting:
    frame: FrameEvent
    done: Done
    queued_at: float
    owned: Owned = always_owned
    tried: set[str] = field(default_factory=set)
    result: Result | None = None  # an in-order frame's end, held until the frames before it have ended

    @property
    def key(self) -> str:
        return self.frame.task_id

    @property
    def lossless(self) -> bool:
        return self.frame.freshness is Freshness.ALL


@dataclass
class TaskPressure:
    """Since the last report: frames of a task that arrived, that were dropped (superseded or stale), and that
    left inference by any way (the credit a lossless camera waits for)."""

    received: int = 0
    dropped: int = 0
    ended: int = 0


Handover = tuple[Waiting, Result]


@dataclass
class Ends:
    """What one change to the room ended: every result as its frame ended (`ended`), and the results to hand on
    now, in the order they go (`released`), which holds back a lossless task's result until its turn."""

    ended: list[Result] = field(default_factory=list)
    released: list[Handover] = field(default_factory=list)


class WaitingRoom:
    def __init__(self, max_waiting: int, max_age_ms: int) -> None:
        self.max_waiting = max_waiting
        self.max_age_ms = max_age_ms
        self.lines: OrderedDict[str, deque[Waiting]] = OrderedDict()  # the line: a task's turn, its frames
        self.queued = 0
        self.in_order: dict[str, deque[Waiting]] = {}  # frames of lossless tasks not yet handed on, in order
        self.pressure: dict[str, TaskPressure] = {}

    # -- the way in ---------------------------------------------------------------------------------------------

    def arrive(self, item: Waiting) -> Ends:
        """Counts an arriving frame; a live one already too old is dropped at once, without waiting for space."""
        self._pressure_of(item).received += 1
        ends = Ends()
        if self.too_old(item):
            self._drop(item, "stale", ends)
        return ends

    def must_wait(self, item: Waiting) -> bool:
        """Whether an arrived frame waits for space: while the room is full, unless it is live and its task has a
        frame waiting, which it replaces."""
        return self.queued >= self.max_waiting and (item.lossless or item.key not in self.lines)

    def submit(self, item: Waiting) -> Ends:
        """Puts an arrived frame in its task's line. A live frame replaces its task's waiting one in place, unless
        that one was captured later: then the arriving frame is the one dropped."""
        ends = Ends()
        line = self.lines.get(item.key)
        waiting = line[-1] if line else None
        if item.lossless:
            self.in_order.setdefault(item.key, deque()).append(item)
            self._enqueue(item)
        elif line is None or waiting is None or waiting.lossless:
            self._enqueue(item)
        elif waiting.frame.captured_at > item.frame.captured_at:
            self._drop(item, "superseded", ends)
        else:
            line[-1] = item
            self._drop(waiting, "superseded", ends)
        return ends

    # -- what the dispatcher sees and takes ---------------------------------------------------------------------

    def heads(self) -> Iterator[Waiting]:
        """The first frame of each line, in turn; a line emptied meanwhile (its frames left with a batch) is passed
        over."""
        for key in list(self.lines):
            if line := self.lines.get(key):
                yield line[0]

    def task_types(self) -> set[TaskType]:
        return {line[0].frame.task_type for line in self.lines.values()}

    def batch(self, first: Waiting, service_id: str, size: int) -> list[Waiting]:
        """`first`, and after it, in turn, frames of its task type that the service has not failed and whose
        partition is still this worker's, up to `size` frames."""
        batch = [first]
        for item in self._everyone():
            if len(batch) == size:
                break
            if (item is not first and item.frame.task_type == first.frame.task_type
                    and service_id not in item.tried and item.owned()):
                batch.append(item)
        return batch

    def send(self, batch: list[Waiting], service_id: str) -> None:
        """Takes a request's frames out of their lines; a task with frames left waits for its next turn."""
        for item in batch:
            self._dequeue(item)
            item.tried.add(service_id)
            if item.key in self.lines:
                self.lines.move_to_end(item.key)

    # -- ends ---------------------------------------------------------------------------------------------------

    def end(self, item: Waiting, result: Result) -> Ends:
        """A frame out of the room (at a service) ended with `result`."""
        ends = Ends()
        self._end(item, result, ends)
        return ends

    def fail(self, item: Waiting, reason: str, elsewhere: bool) -> Ends:
        """A frame whose request failed ends failed, unless a service it has not tried may take it (`elsewhere`)
        and it is not too old; then a live frame whose task has a newer one waiting is dropped (superseded), and
        any other goes back to the front of the room, for it has waited longest."""
        ends = Ends()
        if not elsewhere or self.too_old(item):
            self._end(item, FrameOutcome(frame=item.frame, outcome=Outcome.FAILED, reason=reason), ends)
        elif item.key in self.lines and not item.lossless:
            self._drop(item, "superseded", ends)
        else:
            self._enqueue(item, first=True)
        return ends

    def is_lapsed(self, item: Waiting) -> bool:
        """Whether a waiting frame can no longer go: its partition was revoked from this worker (its result is then
        discarded), or it is live and too old."""
        return not item.owned() or self.too_old(item)

    def lapse(self, item: Waiting) -> Ends:
        ends = Ends()
        self._lapse(item, ends)
        return ends

    def expire(self, now: float, served: Collection[TaskType]) -> Ends:
        """Every lapsed frame leaves, and so does one whose task type no live service serves once it has waited
        `WAIT_FOR_SERVICE_S` (failed)."""
        ends = Ends()
        for item in list(self._everyone()):
            if self.is_lapsed(item):
                self._lapse(item, ends)
            elif item.frame.task_type not in served and now - item.queued_at >= WAIT_FOR_SERVICE_S:
                self._dequeue(item)
                self._end(item, FrameOutcome(frame=item.frame, outcome=Outcome.FAILED, reason="no_service"), ends)
        return ends

    def too_old(self, item: Waiting) -> bool:
        return not item.lossless and item.frame.age_ms() > self.max_age_ms

    def take_pressure(self) -> dict[str, TaskPressure]:
        """Per task, what arrived, was dropped and ended since the last call (the extractor's credit signal)."""
        taken, self.pressure = self.pressure, {}
        return taken

    # -- inside -------------------------------------------------------------------------------------------------

    def _everyone(self) -> Iterator[Waiting]:
        return (item for line in self.lines.values() for item in line)

    def _enqueue(self, item: Waiting, first: bool = False) -> None:
        line = self.lines.get(item.key)
        if line is None:
            line = self.lines[item.key] = deque()
        if first:
            line.appendleft(item)
            self.lines.move_to_end(item.key, last=False)
        else:
            line.append(item)
        self.queued += 1

    def _dequeue(self, item: Waiting) -> None:
        line = self.lines[item.key]
        line.remove(item)
        self.queued -= 1
        if not line:
            del self.lines[item.key]

    def _lapse(self, item: Waiting, ends: Ends) -> None:
        self._dequeue(item)
        if item.owned():
            self._drop(item, "stale", ends)
        else:
            self._end(item, FrameOutcome(frame=item.frame, outcome=Outcome.DROPPED, reason="revoked"), ends)

    def _drop(self, item: Waiting, reason: str, ends: Ends) -> None:
        self._pressure_of(item).dropped += 1
        self._end(item, FrameOutcome(frame=item.frame, outcome=Outcome.DROPPED, reason=reason), ends)

    def _end(self, item: Waiting, result: Result, ends: Ends) -> None:
        ends.ended.append(result)
        self._pressure_of(item).ended += 1
        if item.lossless and item.owned():
            item.result = result
        else:
            ends.released.append((item, result))  # a revoked frame's is discarded when handed on: no order to keep
        if item.lossless:
            self._release_in_order(item.key, ends)

    def _release_in_order(self, key: str, ends: Ends) -> None:
        """Releases a lossless task's results that no earlier frame holds back; a revoked frame holds none back
        (one still at a service: the frames read again after the revocation need not wait for its answer)."""
        in_order = self.in_order.get(key)
        if in_order is None:
            return
        while in_order and ((head := in_order[0]).result is not None or not head.owned()):
            in_order.popleft()
            if head.result is not None:
                ends.released.append((head, head.result))
        if not in_order:
            del self.in_order[key]

    def _pressure_of(self, item: Waiting) -> TaskPressure:
        return self.pressure.setdefault(item.key, TaskPressure())
