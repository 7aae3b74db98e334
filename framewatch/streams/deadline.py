"""A stop that cannot hang: once a process is asked to stop, it exits by a deadline whatever it waits on.

Kafka clients can wait for minutes on a broker that went away (leaving a group, flushing a producer); a
supervisor (systemd, Kubernetes) usually kills at 30 s, and then nothing says why.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from mode import Worker

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


class StopsWithinDeadline(Worker):
    """A mode (or Faust) worker stopped within `STOP_DEADLINE_S` of SIGTERM or SIGINT whatever it waits on:
    past it, the process exits with status 1, saying so."""

    def _schedule_shutdown(self, received: signal.Signals) -> None:
        if not self._signal_stop_time:
            exit_unless_stopped_within(f"the {type(self).__name__}")
        super()._schedule_shutdown(received)
