"""The extractor's clock against the broker's, measured NTP-style from the FrameEvents it sends.

fw.frames is a `LogAppendTime` topic: the broker stamps each record with its own clock when it appends it, and the
producer's acknowledgement carries that stamp back. A send taken at `sent` and acknowledged at `acked` (both on
the extractor's wall clock) was appended somewhere in between, so

    offset = broker_append_time - (sent + acked) / 2      (broker clock = extractor clock + offset)

is off by at most half the round trip. Of the recent samples the one with the smallest round trip is kept: queueing
in the producer or the broker only ever lengthens a round trip, so the quickest is the truest. Nothing here looks
at capture times: a frame that waited for its upload would otherwise look like a clock behind.

Each FrameEvent carries the offset in force when it was sent (`clock_offset_ms`), and the worker judges its age on
the broker's clock. The skew (the extractor's clock minus the broker's: negative when it is behind) is exported as
`framewatch_extractor_clock_skew_seconds{extractor}`, reported on fw.cameras, and logged when over a second.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

from aiokafka.structs import RecordMetadata
from prometheus_client import Gauge

log = logging.getLogger("framewatch.extractor")

CLOCK_SKEW = Gauge("framewatch_extractor_clock_skew_seconds", "How far the extractor's clock is ahead of the "
                   "broker's (negative: behind), measured from fw.frames' append times", ["extractor"])

LOG_APPEND_TIME = 1  # RecordMetadata.timestamp_type: the broker's own stamp (0: the producer's, which says nothing)
SAMPLES_KEPT = 64
SAMPLE_MAX_AGE_S = 60.0  # a clock stepped by NTP is believed within a minute, however quick its old samples were
SKEW_WARNING_MS = 1000  # logged above this, and again when it moves by as much
SKEW_NORMAL_MS = 500  # below this it is back to normal (the gap keeps a skew near 1 s from logging on every sample)


@dataclass(frozen=True)
class ClockSample:
    round_trip_ms: int
    offset_ms: float
    taken_at_s: float  # monotonic


class ClockOffset:
    """The offset (broker clock minus this host's) from the sample with the smallest round trip among the last
    `kept` samples taken within `max_age_s`; None until one is taken."""

    def __init__(self, kept: int = SAMPLES_KEPT, max_age_s: float = SAMPLE_MAX_AGE_S) -> None:
        self.samples: deque[ClockSample] = deque(maxlen=kept)
        self.max_age_s = max_age_s

    def add(self, sent_ms: int, acked_ms: int, broker_ms: int, at_s: float) -> None:
        """A send at `sent_ms`, acknowledged at `acked_ms` (this host's wall clock) and appended at `broker_ms`
        (the broker's); `at_s` is this host's monotonic clock. A negative round trip (the wall clock stepped back
        meanwhile) says nothing and is ignored."""
        if acked_ms < sent_ms:
            return
        self.samples.append(ClockSample(acked_ms - sent_ms, broker_ms - (sent_ms + acked_ms) / 2, at_s))

    def offset_ms(self, now_s: float) -> int | None:
        while self.samples and now_s - self.samples[0].taken_at_s > self.max_age_s:
            self.samples.popleft()
        if not self.samples:
            return None
        return round(min(self.samples, key=lambda s: s.round_trip_ms).offset_ms)


class SkewLog:
    """Says when a skew goes over SKEW_WARNING_MS (a warning), when it moves by as much again, and when it is back
    under SKEW_NORMAL_MS: once each, not on every sample."""

    def __init__(self, extractor: str) -> None:
        self.extractor = extractor
        self.warned_at: int | None = None  # the skew last warned about; None while normal

    def update(self, skew_ms: int) -> None:
        if abs(skew_ms) > SKEW_WARNING_MS and (self.warned_at is None
                                               or abs(skew_ms - self.warned_at) > SKEW_WARNING_MS):
            log.warning("extractor %s: its clock is %+.1fs off the broker's (frame ages are corrected by it; fix "
                        "this host's NTP)", self.extractor, skew_ms / 1000)
            self.warned_at = skew_ms
        elif abs(skew_ms) < SKEW_NORMAL_MS and self.warned_at is not None:
            log.info("extractor %s: its clock is back within %+.1fs of the broker's", self.extractor, skew_ms / 1000)
            self.warned_at = None


class BrokerClock:
    """One extractor's offset to the broker's clock, fed by every FrameEvent it sends, with its gauge and log."""

    def __init__(self, extractor: str) -> None:
        self.extractor = extractor
        self.estimate = ClockOffset()
        self.skew_log = SkewLog(extractor)
        self._offset_ms: int | None = None

    @property
    def offset_ms(self) -> int:
        """What to add to this host's times to read them on the broker's clock; 0 until measured."""
        return self._offset_ms or 0

    @property
    def skew_ms(self) -> int | None:
        """This host's clock minus the broker's; None until measured."""
        return None if self._offset_ms is None else -self._offset_ms

    def observe(self, sent_ms: int, acked_ms: int, delivered: RecordMetadata) -> None:
        """A record sent at `sent_ms` and acknowledged at `acked_ms` with this metadata; only a topic stamped with
        LogAppendTime tells the broker's clock."""
        if delivered.timestamp_type != LOG_APPEND_TIME or delivered.timestamp is None:
            return
        now_s = time.monotonic()
        self.estimate.add(sent_ms, acked_ms, delivered.timestamp, now_s)
        offset = self.estimate.offset_ms(now_s)
        if offset is None or offset == self._offset_ms:
            return
        self._offset_ms = offset
        CLOCK_SKEW.labels(self.extractor).set(-offset / 1000)  # no sample before the first: unmeasured is not 0
        self.skew_log.update(-offset)
