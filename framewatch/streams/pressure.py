"""Pressure from downstream: how much each camera's sampling interval is stretched while inference is behind.

The inference agent reports, per task and every few seconds, how many frames it received and how many it had to
drop (superseded by a newer frame of the same camera, or stale) on fw.pressure. A camera whose frames were dropped
samples at the rate inference kept up with; one whose frames all went through probes back towards its configured
rate, 15 % per report. Frames sampled for nothing would otherwise cost an upload, a Kafka record and a delete each.

A camera that wants every frame analysed (`freshness = "all"`) is never throttled (inference drops none of its
frames); it is held back instead: it sends a frame only while it is less than `LOSSLESS_AHEAD` frames ahead of
what inference has finished, as the reports count it, so a recording waits for the detectors instead of filling
fw.frames and the object store. Reports stop when inference has nothing more of the camera (or no worker runs, or
a report was missed): after `SILENT_S` without one, the count starts again from what was sent, so a camera is
never held for ever; it trickles on at `LOSSLESS_AHEAD` frames per `SILENT_S` while no worker reports.
"""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import Gauge

from framewatch.clients.bus import follow
from framewatch.schemas.config import Config
from framewatch.schemas.events import DecodeError, InferencePressure
from framewatch.schemas.topics import PRESSURE

log = logging.getLogger("framewatch.extractor")

THROTTLE = Gauge("framewatch_extractor_throttle", "Factor stretching a camera's sampling interval (1: none)",
                 ["task"])

DROPS_TOLERATED = 0.05  # a share of dropped frames that is noise, not pressure
RECOVERY_STEP = 0.85
LOSSLESS_AHEAD = 32  # frames a lossless camera may have sent beyond what inference has finished
SILENT_S = 5.0  # two report periods and a half without a report of a task: inference has all its frames


class Throttle:
    def __init__(self, max_factor: float) -> None:
        self.max_factor = max_factor
        self.factors: dict[str, float] = {}
        self.finished: dict[str, int] = {}  # per task, frames whose inference ended since we listened
        self.reported_at: dict[str, float] = {}
        self._reported = asyncio.Event()

    def factor(self, task_id: str) -> float:
        return self.factors.get(task_id, 1.0)

    def ahead(self, task_id: str, sent: int) -> int:
        """How many of the `sent` frames inference has not finished yet."""
        return max(0, sent - self.finished.get(task_id, 0))

    async def room(self, task_id: str, sent: int) -> None:
        """Returns once a lossless camera that has sent `sent` frames is less than LOSSLESS_AHEAD frames ahead."""
        waiting_since = time.monotonic()
        while self.ahead(task_id, sent) >= LOSSLESS_AHEAD:
            self._reported.clear()
            try:
                await asyncio.wait_for(self._reported.wait(), 1.0)
            except TimeoutError:
                pass
            last = max(waiting_since, self.reported_at.get(task_id, 0.0))
            if time.monotonic() - last >= SILENT_S:
                self.finished[task_id] = sent  # nothing more to hear: start counting again from here

    def observe(self, report: InferencePressure) -> None:
        self.finished[report.task_id] = self.finished.get(report.task_id, 0) + report.ended
        self.reported_at[report.task_id] = time.monotonic()
        self._reported.set()
        if report.received == 0:
            return
        current = self.factor(report.task_id)
        kept_up = report.received - report.dropped
        if report.dropped > DROPS_TOLERATED * report.received:
            wanted = current * report.received / max(kept_up, 1)
        elif report.dropped == 0:
            wanted = current * RECOVERY_STEP
        else:
            wanted = current
        factor = min(self.max_factor, max(1.0, wanted))
        if factor != current:
            log.info("task %s: sampling interval x%.2f (inference dropped %d of %d frames)", report.task_id, factor,
                     report.dropped, report.received)
        self.factors[report.task_id] = factor
        THROTTLE.labels(report.task_id).set(factor)

    async def follow(self, config: Config) -> None:
        """Applies the reports published from now on; runs until cancelled."""
        async for record in follow(config, PRESSURE, from_beginning=False):
            try:
                self.observe(InferencePressure.decode(record.value))
            except DecodeError as error:
                log.warning("ignoring a bad pressure report: %s", error)
