"""A service's capacity split among workers without PostgreSQL (agents/membership.py), and what CapacityShare
(agents/inference/capacity.py) lets a worker send around a lost session and a lowered capacity: with a stand-in
connection, no PostgreSQL needed (tests/test_capacity.py and tests/test_capacity_failover.py use a real one)."""

from __future__ import annotations

import math
from typing import Any, cast

import asyncpg
import pytest

from framewatch.agents.inference import capacity
from framewatch.agents.inference.capacity import CapacityShare
from framewatch.agents.membership import Membership, membership_of


@pytest.mark.parametrize(("total", "members"), [(8, 4), (8, 3), (2, 3), (1, 5), (7, 7), (1024, 10)])
def test_the_parts_add_up_to_the_capacity_and_differ_by_one_at_most(total: int, members: int) -> None:
    for turn in (0, 1, -7, 2**31):
        parts = [Membership(members, rank).part(total, turn) for rank in range(members)]
        assert sum(parts) == total
        assert max(parts) - min(parts) <= 1


def test_the_turn_gives_the_remainder_to_other_members() -> None:
    def fuller(turn: int) -> set[int]:
        return {rank for rank in range(3) if Membership(3, rank).part(2, turn) == 1}

    assert len({frozenset(fuller(turn)) for turn in range(3)}) == 3


def test_every_member_sees_the_same_order() -> None:
    addresses = ["http://b:6066/?member=2", "http://a:6066/?member=9", "http://a:6066/?member=1"]
    ranks = {membership_of(addresses, own).rank for own in addresses}
    assert ranks == {0, 1, 2}
    assert membership_of(addresses, addresses[0]).members == 3
    assert membership_of(addresses[1:], addresses[0]) == Membership(3, 2), "a member missing from the list counts"


class Connection:
    """What CapacityShare asks of its PostgreSQL session; `others` are slots other workers hold."""

    def __init__(self, others: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.others = set(others)
        self.unlocked: list[int] = []
        self.closed = False
        self.failing: BaseException | None = None

    async def fetchval(self, _query: str, _key: int, capacity: int, held: list[int]) -> int | None:
        self._fail()
        free = set(range(capacity)) - set(held) - self.others
        return min(free) if free else None

    async def execute(self, query: str, *args: Any) -> None:
        self._fail()
        if "unlock" in query:
            self.unlocked.append(args[1])

    def _fail(self) -> None:
        if self.failing is not None:
            raise self.failing

    def is_closed(self) -> bool:
        return self.closed

    def terminate(self) -> None:
        self.closed = True


class Share:
    """A CapacityShare for one service, 'gpu', its in-flight count set by the test."""

    def __init__(self, connection: Connection | None, membership: Membership | None = None) -> None:
        self.in_flight = 0
        self.share = CapacityShare("postgresql://unused", "ns", in_flight=lambda _: self.in_flight)
        self.share.membership = lambda: membership
        self.share._connection = cast(asyncpg.Connection, connection)

    def hold(self, *slots: int, capacity: int = 8) -> None:
        self.share.usable("gpu", capacity)
        self.share.services["gpu"].held = list(slots)

    @property
    def held(self) -> list[int]:
        return sorted(self.share.services["gpu"].held) if "gpu" in self.share.services else []


async def test_a_lowered_capacity_counts_only_the_slots_below_it_at_once() -> None:
    worker = Share(Connection())
    worker.hold(0, 5, 6, 7)
    assert worker.share.usable("gpu", 8) == 4
    assert worker.share.usable("gpu", 4) == 1, "slots 5-7 are no more"
    assert worker.share.usable("gpu", 1) == 1
    worker.hold(5, 6, 7)
    assert worker.share.usable("gpu", 4) == 0


async def test_slots_above_a_lowered_capacity_are_released_busy_or_not() -> None:
    connection = Connection()
    worker = Share(connection)
    worker.hold(0, 5, 6, 7)
    worker.in_flight = 4  # every slot busy
    worker.share.demand("gpu", 4)
    await worker.share._adjust()
    assert sorted(connection.unlocked) == [5, 6, 7]
    assert all(slot < 4 for slot in worker.held), worker.held  # it may take free ones to cover what still runs


async def test_a_slot_whose_request_runs_is_never_given_back() -> None:
    connection = Connection()
    worker = Share(connection)
    worker.hold(0, 1, 2)
    worker.in_flight = 2
    worker.share.services["gpu"].demand_at = -math.inf  # nothing waiting for the service any more
    await worker.share._adjust()
    assert len(worker.held) == 2 and connection.unlocked == [2]


async def test_a_failed_statement_on_an_open_session_keeps_it_and_its_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capacity, "RECONNECT_S", 0)
    connection = Connection()
    worker = Share(connection)
    worker.hold(0, 1)
    worker.share.services["gpu"].demand_at = -math.inf
    connection.failing = asyncpg.exceptions.LockNotAvailableError("no")
    await worker.share._adjust_or_wait()
    assert worker.share._connection is not None and worker.held == [0, 1]
    connection.closed = True
    await worker.share._adjust_or_wait()
    assert worker.share._connection is None, "a closed session is lost"


async def test_a_timed_out_statement_ends_the_session_whose_locks_it_may_have_changed() -> None:
    connection = Connection()
    worker = Share(connection)
    worker.hold(0, 1)
    worker.share.services["gpu"].demand_at = -math.inf
    connection.failing = TimeoutError()  # asyncpg's command_timeout: the statement may have run all the same
    await worker.share._adjust_or_wait()
    assert worker.share._connection is None and connection.closed and worker.held == []


async def test_after_a_loss_a_worker_sends_its_part_but_no_more_than_it_held_for_a_request_timeout() -> None:
    connection = Connection()
    worker = Share(connection, Membership(members=4, rank=0))
    worker.hold(3)
    worker.share._lost("test")
    assert connection.closed
    assert worker.share.usable("gpu", 8) == 1, "the others' requests on their slots may still run"
    worker.share._lost_at -= worker.share.request_timeout_s
    assert worker.share.usable("gpu", 8) == 2, "8 slots among 4 workers"
    assert worker.share.usable("gpu", 4) == 1, "a lowered capacity counts at once"


async def test_without_a_membership_a_worker_sends_one_request_at_a_time() -> None:
    worker = Share(None)
    worker.share._lost_at = -math.inf
    assert worker.share.usable("gpu", 8) == 1


async def test_back_on_postgresql_a_worker_holds_no_more_than_its_part_while_the_others_come_back() -> None:
    worker = Share(Connection(), Membership(members=4, rank=1))
    worker.share._lost("test")
    worker.share._settled_at = math.inf  # as `_connect` sets it after a loss
    worker.share._connection = cast(asyncpg.Connection, Connection())
    for _ in range(8):
        worker.in_flight = len(worker.held)  # every slot it has is busy, and frames wait
        worker.share.demand("gpu", 8)
        await worker.share._adjust()
    assert worker.held == [0, 1]
    worker.hold(0, 1, 2, 3)
    assert worker.share.usable("gpu", 8) == 2
