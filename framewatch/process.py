"""How framewatch's long-running processes run: under a mode worker, with a stop that cannot hang.

Once a process is asked to stop it exits by a deadline whatever it waits on: Kafka clients can wait for minutes on a
broker that went away (leaving a group, flushing a producer), and a supervisor (systemd, Kubernetes) usually kills
at 30 s, and then nothing says why. `serve` runs a service (the extractor, a bridge) with `/metrics`, `/healthz`
and `/readyz` beside it; the Faust worker is a `StopsWithinDeadline` too (agents/app.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable

from mode import Service, Worker

from framewatch.health import HealthEndpoint, Readiness

log = logging.getLogger("framewatch")

STOP_DEADLINE_S = 25.0


def exit_unless_stopped_within(what: str, seconds: float = STOP_DEADLINE_S) -> None:
    """From now on, `what` has `seconds` to exit by itself; then the process exits with status 1, saying so."""
    def stop_now() -> None:
        log.error("%s did not stop within %.0fs of being asked to: exiting now", what, seconds)
        logging.shutdown()
        os._exit(1)

    deadline = threading.Timer(seconds, stop_now)
    deadline.daemon = True
    deadline.start()


def settle_heap() -> None:
    """Takes what is alive once a process has started (its modules, the app, its clients) out of the cyclic garbage
    collector's sight for good. A full collection otherwise walks all of it, and stops every thread meanwhile:
    65-106 ms in a worker, the tail of every frame then in flight (`framewatch_gc_pause_seconds`)."""
    gc.collect()
    gc.freeze()


class StopsWithinDeadline(Worker):
    """A mode (or Faust) worker stopped within `STOP_DEADLINE_S` of SIGTERM or SIGINT whatever it waits on:
    past it, the process exits with status 1, saying so. Once started, its heap is settled (`settle_heap`)."""

    async def on_started(self) -> None:
        settle_heap()
        await super().on_started()

    def _schedule_shutdown(self, received: signal.Signals) -> None:
        if not self._signal_stop_time:
            exit_unless_stopped_within(f"the {type(self).__name__}")
        super()._schedule_shutdown(received)


class ServiceWorker(StopsWithinDeadline, Worker):
    """Runs a service until SIGTERM or SIGINT (then stops it within the deadline) or a crash (status 1)."""


def serve(build: Callable[[], Awaitable[tuple[Service, Readiness]]], host: str, port: int,
          loglevel: str = "INFO") -> None:
    """Builds the service inside its event loop (Kafka's clients must be made there), then runs it with the
    health endpoint on `host:port` until stopped; does not return."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    async def built() -> Service:
        service, readiness = await build()
        service.add_dependency(HealthEndpoint(host, port, readiness, loop=loop))
        return service

    ServiceWorker(loop.run_until_complete(built()), loop=loop, loglevel=loglevel, quiet=True).execute_from_commandline()
