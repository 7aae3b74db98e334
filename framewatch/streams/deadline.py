"""A stop that cannot hang: once a process is asked to stop, it exits by a deadline whatever it waits on.

Kafka clients can wait for minutes on a broker that went away (leaving a group, flushing a producer); a
supervisor (systemd, Kubernetes) usually kills at 30 s, and then nothing says why.
"""

from __future__ import annotations

import logging
import os
import threading

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
