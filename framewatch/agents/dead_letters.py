"""The one way a record framewatch cannot handle becomes a dead letter: counted and logged with its reason, whichever
producer then sends it to fw.dead-letters (the app's, or the publisher's transactional one)."""

from __future__ import annotations

import logging

from prometheus_client import Counter

from framewatch.schemas.events import DeadLetter

log = logging.getLogger("framewatch.dead-letters")

DEAD_LETTERS = Counter("framewatch_worker_dead_letters_total", "Records kept on fw.dead-letters, by source topic",
                       ["topic"])


def dead_letter(topic: str, reason: str, record: bytes | str | None, key: str | None = None) -> DeadLetter:
    """The dead letter of a record read from `topic`, counted and logged."""
    letter = DeadLetter.of(topic, reason, record, key)
    DEAD_LETTERS.labels(topic).inc()
    log.error("dead letter from %s (key %s): %s", topic, key, letter.reason)
    return letter
