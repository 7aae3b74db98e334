"""Detector capacity shared by every worker: a service's slots, held as PostgreSQL advisory locks.

A service declares how many requests it takes at once (`capacity`). A worker sends a request only on a slot it
holds, and slot k of service S is the session-level advisory lock (key of S, k) on the worker's own connection:
however many workers there are, the slots held never exceed the capacity, and a worker that dies (its connection
closes) frees its slots at once.

A worker asks for a slot when it has frames for a service and no free slot of its own. It keeps its slots while it
has work and nobody else asks; once another worker asks (a `want` notice on the channel), it gives a slot up as
each request ends and leaves it to the others for a moment, so the workers take turns. Every release is announced
(`free`), so a freed slot is taken within milliseconds and the service stays busy.

When PostgreSQL cannot be reached, the workers split each service's capacity by the consumer group's membership
(`agents/membership.py`: every member has the same view of it): each sends at most its part, and the parts add up to
the capacity (a worker whose part is 0 sends nothing to that service). The changes of mode are where requests of
both modes meet, so each waits out the other's: for one request timeout after the session is lost a worker sends on
no more slots than it held (the others' requests on theirs may still run), and for `SETTLE_S` after it is back it
holds no more than its part (the others may not be back yet). A session is given up once it is closed, or once a
statement on it timed out (it may have taken or freed a lock all the same); a statement refused leaves it and its
locks as they were. A lowered capacity counts at once: the
slots above it are released, busy or not (no one can take them), and the requests on them count against the rest.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson
from mode import Service
from prometheus_client import Counter, Gauge

from framewatch.agents.membership import Membership

if TYPE_CHECKING:
    from framewatch.agents.inference.scheduler import SlotUser

log = logging.getLogger("framewatch.capacity")

CHANNEL = "framewatch_capacity"
KEEP_IDLE_S = 0.25  # a slot nobody here needed for this long goes back
CONTESTED_S = 0.5  # how long one `want` notice from another worker counts
YIELD_S = 0.05  # after giving a slot up to a waiting worker, do not ask for that service again this soon
WANT_EVERY_S = 0.1  # a waiting worker repeats its notice (and its attempt) this often
SETTLE_S = 10.0  # after its session is back, a worker keeps to its part this long: the others may not be back yet
RECONNECT_S = 1.0
TICK_S = 0.05

SLOTS_HELD = Gauge("framewatch_capacity_slots_held", "Slots of a service this worker holds", ["service"])
SLOT_WAITS = Counter("framewatch_capacity_slot_wait_seconds_total",
                     "Time this worker had frames for a service and no free slot of it", ["service"])
YIELDS = Counter("framewatch_capacity_yields_total", "Slots given up to another worker that asked", ["service"])
LINK_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)

COORDINATED = Gauge("framewatch_capacity_coordinated",
                    "1 while slots are shared through PostgreSQL, 0 while the worker falls back to an even split")
PART = Gauge("framewatch_capacity_part", "Requests this worker may have in flight on a service while PostgreSQL "
             "cannot share its slots: its part of the capacity among the consumer group's workers", ["service"])

# slot k of the service: the first slot not held here whose lock is free, at most one (OFFSET 0 keeps the planner
# from evaluating the lock call on slots already held, which would take them twice)
TAKE_SLOT = ("SELECT k FROM (SELECT k FROM generate_series(0, $2 - 1) AS k WHERE k <> ALL($3::int[]) OFFSET 0) AS free "
             "WHERE pg_try_advisory_lock($1, k) LIMIT 1")


def service_key(namespace: str, service_id: str) -> int:
    """The advisory lock's first key: the service within this deployment (a signed 32-bit integer)."""
    return zlib.crc32(f"{namespace}/{service_id}".encode()) - 2**31


@dataclass
class ServiceSlots:
    key: int
    capacity: int = 1
    held: list[int] = field(default_factory=list)
    demand_at: float = 0.0  # when the dispatcher last had a frame for it
    short_since: float | None = None  # since when it has had frames and no free slot
    contested_at: float = -1e9  # another worker's last `want`
    taken_at: float = -1e9  # a slot taken is used at least once, whoever asked before
    yielded_at: float = -1e9
    wanted_at: float = -1e9  # our own last `want` notice
    held_at_loss: int = 0  # slots held when the session was lost

    def held_within(self, capacity: int) -> int:
        return sum(1 for slot in self.held if slot < capacity)


def nothing_in_flight(_service_id: str) -> int:
    return 0


class CapacityShare(Service):
    """This worker's part of every service's capacity: the scheduler's `Capacity`. The scheduler it `serve`s asks
    `usable` before it sends and calls `demand` while it has frames it cannot send; `in_flight` tells how many of a
    service's slots are in use (the scheduler's requests on it)."""

    def __init__(self, dsn: str, namespace: str, in_flight: Callable[[str], int] = nothing_in_flight,
                 request_timeout_s: float = 10.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dsn = dsn
        self.namespace = namespace
        self.in_flight = in_flight
        self.request_timeout_s = request_timeout_s  # the longest a request sent before a loss can still run
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.services: dict[str, ServiceSlots] = {}
        self.on_slot: Callable[[], None] = lambda: None  # the scheduler's wake-up: a slot was taken
        # the consumer group's membership (GroupAssignor.current); None until known: a part of 1 then
        self.membership: Callable[[], Membership | None] = lambda: None
        self._connection: asyncpg.Connection | None = None
        self._lost_at = -math.inf  # when the session was last lost (or first could not be opened)
        self._settled_at = -math.inf  # until then, a session back after a loss holds no more than the part
        self._wake = asyncio.Event()

    # -- what the scheduler asks --------------------------------------------------------------------------------

    def serve(self, user: SlotUser) -> None:
        """The scheduler whose requests use the slots: its count of them, and its wake-up once a slot is taken."""
        self.in_flight = user.in_flight_on
        self.on_slot = user.wake

    def usable(self, service_id: str, capacity: int) -> int:
        """How many requests this worker may have in flight on the service now."""
        slots = self._slots(service_id, capacity)
        if self._connection is None:
            return self._fallback(slots)
        held = min(slots.held_within(capacity), self._limit(slots))
        if self._contested(slots):
            return min(held, self.in_flight(service_id))  # no new request on a held slot: it goes to the asker
        return held

    def demand(self, service_id: str, capacity: int) -> None:
        """The dispatcher has a frame the service could take."""
        slots = self._slots(service_id, capacity)
        now = time.monotonic()
        slots.demand_at = now
        if self.in_flight(service_id) >= self.usable(service_id, capacity):
            if slots.short_since is None:
                slots.short_since = now
            self._wake.set()
        elif slots.short_since is not None:
            self._end_shortage(service_id, slots, now)

    def held(self, service_id: str) -> int:
        slots = self.services.get(service_id)
        return 0 if slots is None else len(slots.held)

    def _slots(self, service_id: str, capacity: int) -> ServiceSlots:
        slots = self.services.get(service_id)
        if slots is None:
            slots = self.services[service_id] = ServiceSlots(service_key(self.namespace, service_id))
        slots.capacity = capacity
        return slots

    def _contested(self, slots: ServiceSlots) -> bool:
        return slots.contested_at > slots.taken_at and time.monotonic() - slots.contested_at < CONTESTED_S

    def part(self, slots: ServiceSlots) -> int:
        """This worker's part of the service's capacity among the consumer group's workers (1 while unknown)."""
        membership = self.membership()
        if membership is None:
            return min(1, slots.capacity)
        return membership.part(slots.capacity, turn=slots.key)

    def _fallback(self, slots: ServiceSlots) -> int:
        """Without a session: the part, and no more than the slots held at the loss while requests sent before it
        (this worker's and the others', on their slots) may still run."""
        if time.monotonic() - self._lost_at < self.request_timeout_s:
            return min(self.part(slots), slots.held_at_loss)
        return self.part(slots)

    def _limit(self, slots: ServiceSlots) -> int:
        """The most slots of the service this worker may hold now."""
        if time.monotonic() < self._settled_at:
            return min(slots.capacity, self.part(slots))
        return slots.capacity

    def _end_shortage(self, service_id: str, slots: ServiceSlots, now: float) -> None:
        if slots.short_since is not None:
            SLOT_WAITS.labels(service_id).inc(now - slots.short_since)
            slots.short_since = None

    # -- the connection -----------------------------------------------------------------------------------------

    async def on_start(self) -> None:
        await self._connect()
        if self._connection is None:
            self._lost_at = time.monotonic()

    async def on_stop(self) -> None:
        if self._connection is not None:
            await self._connection.close(timeout=2)  # frees every slot held
            self._connection = None

    async def _connect(self) -> None:
        try:
            connection = await asyncpg.connect(self.dsn, timeout=5, command_timeout=5)
            await connection.add_listener(CHANNEL, self._heard)
        except LINK_ERRORS as error:
            # said once an outage: at the start, or by `_lost`
            log.log(logging.WARNING if self._lost_at == -math.inf else logging.DEBUG,
                    "cannot share detector capacity through PostgreSQL (%s): sending at most this worker's "
                    "part of each service's capacity (%s) until it is back", error, self.membership())
            return
        self._connection = connection
        COORDINATED.set(1)
        if self._lost_at > -math.inf:
            self._settled_at = time.monotonic() + SETTLE_S
        log.info("sharing detector capacity as %s", self.worker_id)

    def _lost(self, reason: object) -> None:
        log.warning("lost the capacity connection (%s): sending at most this worker's part of each service's "
                    "capacity (%s) until it is back", reason, self.membership())
        connection, self._connection = self._connection, None
        self._lost_at = time.monotonic()
        COORDINATED.set(0)
        for service_id, slots in self.services.items():
            slots.held_at_loss = slots.held_within(slots.capacity)
            slots.held.clear()  # the session's locks ended with it
            SLOTS_HELD.labels(service_id).set(0)
        if connection is not None:
            connection.terminate()

    def _heard(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            notice = orjson.loads(payload)
            worker, event, key = str(notice["w"]), str(notice["e"]), int(notice["k"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return
        if worker == self.worker_id:
            return
        now = time.monotonic()
        for slots in self.services.values():
            if slots.key == key:
                if event == "want":
                    slots.contested_at = now
                self._wake.set()

    # -- the loop that takes and gives back slots ---------------------------------------------------------------

    @Service.task
    async def _share(self) -> None:
        while not self.should_stop:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=TICK_S)
            except TimeoutError:
                pass
            self._wake.clear()
            self._report()
            if self._connection is None:
                await asyncio.sleep(RECONNECT_S)
                await self._connect()
            elif self._connection.is_closed():
                self._lost("closed")  # noticed even by a worker that had nothing to ask PostgreSQL
            else:
                await self._adjust_or_wait()

    async def _adjust_or_wait(self) -> None:
        try:
            await self._adjust()
        except LINK_ERRORS as error:
            if self.should_stop or self._connection is None:
                return
            if self._connection.is_closed() or isinstance(error, TimeoutError):
                # timed out, a statement may still have taken or freed a lock unknown to `held`: the session is
                # ended, and with it every lock it holds, so the slots held and PostgreSQL's never disagree
                self._lost(error)
                return
            log.warning("a capacity statement failed (%s); the session and its slots stay", error)
            await asyncio.sleep(RECONNECT_S)

    def _report(self) -> None:
        for service_id, slots in self.services.items():
            PART.labels(service_id).set(self.part(slots))

    async def _adjust(self) -> None:
        now = time.monotonic()
        for service_id, slots in self.services.items():
            if beyond := [slot for slot in slots.held if slot >= slots.capacity]:
                await self._release(service_id, slots, beyond)  # the capacity was lowered: these are no more
            idle = len(slots.held) - self.in_flight(service_id)
            needed = now - slots.demand_at < KEEP_IDLE_S
            if idle > 0 and (not needed or self._contested(slots)):
                await self._give_back(service_id, slots, idle)
            elif (slots.short_since is not None and needed and len(slots.held) < self._limit(slots)
                  and now - slots.yielded_at >= YIELD_S):
                await self._take(service_id, slots, now)

    async def _take(self, service_id: str, slots: ServiceSlots, now: float) -> None:
        assert self._connection is not None
        slot = await self._connection.fetchval(TAKE_SLOT, slots.key, slots.capacity, slots.held)
        if slot is not None:
            slots.held.append(slot)
            slots.taken_at = time.monotonic()
            SLOTS_HELD.labels(service_id).set(len(slots.held))
            # not `now`: while the slot was being taken the shortage may have ended and begun again, after `now`
            # (a negative wait crashed the service: Counters take no negative amounts)
            self._end_shortage(service_id, slots, slots.taken_at)
            self.on_slot()
        elif now - slots.wanted_at >= WANT_EVERY_S:
            slots.wanted_at = now
            await self._notify("want", slots.key)

    async def _give_back(self, service_id: str, slots: ServiceSlots, idle: int) -> None:
        """Idle slots (the highest) go back; to the worker that asked, when one did."""
        contested = self._contested(slots)
        await self._release(service_id, slots, sorted(slots.held)[-idle:])
        if contested:
            YIELDS.labels(service_id).inc(idle)
            slots.yielded_at = time.monotonic()

    async def _release(self, service_id: str, slots: ServiceSlots, released: list[int]) -> None:
        assert self._connection is not None
        for slot in released:
            await self._connection.execute("SELECT pg_advisory_unlock($1, $2)", slots.key, slot)
            slots.held.remove(slot)
        SLOTS_HELD.labels(service_id).set(len(slots.held))
        await self._notify("free", slots.key)

    async def _notify(self, event: str, key: int) -> None:
        assert self._connection is not None
        payload = orjson.dumps({"w": self.worker_id, "e": event, "k": key}).decode()
        await self._connection.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
