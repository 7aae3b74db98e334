"""Detector capacity shared by every worker: a service's slots, held as PostgreSQL advisory locks.

A service declares how many requests it takes at once (`capacity`). A worker sends a request only on a slot it
holds, and slot k of service S is the session-level advisory lock (key of S, k) on the worker's own connection:
however many workers there are, the slots held never exceed the capacity, and a worker that dies (its connection
closes) frees its slots at once.

A worker asks for a slot when it has frames for a service and no free slot of its own. It keeps its slots while it
has work and nobody else asks; once another worker asks (a `want` notice on the channel), it gives a slot up as
each request ends and leaves it to the others for a moment, so the workers take turns. Every release is announced
(`free`), so a freed slot is taken within milliseconds and the service stays busy.

When PostgreSQL cannot be reached the worker sends at most capacity / workers last seen (at least 1) until it is
back; the breaker's backing off on 107002 and 429 answers is the second line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
from mode import Service
from prometheus_client import Counter, Gauge

log = logging.getLogger("framewatch.capacity")

CHANNEL = "framewatch_capacity"
KEEP_IDLE_S = 0.25  # a slot nobody here needed for this long goes back
CONTESTED_S = 0.5  # how long one `want` notice from another worker counts
YIELD_S = 0.05  # after giving a slot up to a waiting worker, do not ask for that service again this soon
WANT_EVERY_S = 0.1  # a waiting worker repeats its notice (and its attempt) this often
WORKERS_SEEN_S = 30.0
RECONNECT_S = 1.0
TICK_S = 0.05

SLOTS_HELD = Gauge("framewatch_capacity_slots_held", "Slots of a service this worker holds", ["service"])
SLOT_WAITS = Counter("framewatch_capacity_slot_wait_seconds_total",
                     "Time this worker had frames for a service and no free slot of it", ["service"])
YIELDS = Counter("framewatch_capacity_yields_total", "Slots given up to another worker that asked", ["service"])
LINK_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)

COORDINATED = Gauge("framewatch_capacity_coordinated",
                    "1 while slots are shared through PostgreSQL, 0 while the worker falls back to an even split")

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


class CapacityShare(Service):
    """This worker's part of every service's capacity. The scheduler asks `usable` before it sends and calls
    `demand` while it has frames it cannot send; `in_flight` tells how many of a service's slots are in use."""

    def __init__(self, dsn: str, namespace: str, in_flight: Callable[[str], int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dsn = dsn
        self.namespace = namespace
        self.in_flight = in_flight
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.services: dict[str, ServiceSlots] = {}
        self.on_slot: Callable[[], None] = lambda: None  # the scheduler's wake-up: a slot was taken
        self.workers_seen: dict[str, float] = {}
        self._connection: asyncpg.Connection | None = None
        self._wake = asyncio.Event()

    # -- what the scheduler asks --------------------------------------------------------------------------------

    def usable(self, service_id: str, capacity: int) -> int:
        """How many requests this worker may have in flight on the service now."""
        slots = self._slots(service_id, capacity)
        if self._connection is None:
            return max(1, capacity // max(1, self._workers_alive()))
        held = min(len(slots.held), capacity)
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

    def _workers_alive(self) -> int:
        horizon = time.monotonic() - WORKERS_SEEN_S
        return 1 + sum(1 for seen in self.workers_seen.values() if seen >= horizon)

    def _end_shortage(self, service_id: str, slots: ServiceSlots, now: float) -> None:
        if slots.short_since is not None:
            SLOT_WAITS.labels(service_id).inc(now - slots.short_since)
            slots.short_since = None

    # -- the connection -----------------------------------------------------------------------------------------

    async def on_start(self) -> None:
        await self._connect()

    async def on_stop(self) -> None:
        if self._connection is not None:
            await self._connection.close(timeout=2)  # frees every slot held
            self._connection = None

    async def _connect(self) -> None:
        try:
            connection = await asyncpg.connect(self.dsn, timeout=5, command_timeout=5)
            await connection.add_listener(CHANNEL, self._heard)
        except LINK_ERRORS as error:
            log.warning("cannot share detector capacity through PostgreSQL (%s): sending at most capacity / "
                        "workers until it is back", error)
            return
        self._connection = connection
        COORDINATED.set(1)
        log.info("sharing detector capacity as %s", self.worker_id)

    def _lost(self, error: BaseException) -> None:
        log.warning("lost the capacity connection (%s): its slots are free for others; sending at most "
                    "capacity / workers until it is back", error)
        connection, self._connection = self._connection, None
        COORDINATED.set(0)
        for service_id, slots in self.services.items():
            slots.held.clear()
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
        self.workers_seen[worker] = now
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
            if self._connection is None:
                await asyncio.sleep(RECONNECT_S)
                await self._connect()
                continue
            try:
                await self._adjust()
            except LINK_ERRORS as error:
                if self.should_stop:
                    return
                self._lost(error)

    async def _adjust(self) -> None:
        now = time.monotonic()
        for service_id, slots in self.services.items():
            in_flight = self.in_flight(service_id)
            idle = len(slots.held) - in_flight
            needed = now - slots.demand_at < KEEP_IDLE_S
            if idle > 0 and (not needed or self._contested(slots) or len(slots.held) > slots.capacity):
                await self._give_back(service_id, slots, idle)
            elif (slots.short_since is not None and needed and len(slots.held) < slots.capacity
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
        assert self._connection is not None
        contested = self._contested(slots)
        for _ in range(idle):
            slot = max(slots.held)
            await self._connection.execute("SELECT pg_advisory_unlock($1, $2)", slots.key, slot)
            slots.held.remove(slot)
            if contested:
                YIELDS.labels(service_id).inc()
        if contested:
            slots.yielded_at = time.monotonic()
        SLOTS_HELD.labels(service_id).set(len(slots.held))
        await self._notify("free", slots.key)

    async def _notify(self, event: str, key: int) -> None:
        assert self._connection is not None
        payload = orjson.dumps({"w": self.worker_id, "e": event, "k": key}).decode()
        await self._connection.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
