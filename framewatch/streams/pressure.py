"""Pressure from downstream: how much each camera's sampling interval is stretched while inference is behind.

The inference agent reports, per task and every few seconds, how many frames it received and how many it had to
drop (superseded by a newer frame of the same camera, or stale) on fw.pressure. A camera whose frames were dropped
samples at the rate inference kept up with; one whose frames all went through probes back towards its configured
rate, 15 % per report. Frames sampled for nothing would otherwise cost an upload, a Kafka record and a delete each.
"""

from __future__ import annotations

import logging

from prometheus_client import Gauge

from framewatch.schemas.config import Config
from framewatch.schemas.events import DecodeError, InferencePressure
from framewatch.schemas.topics import PRESSURE
from framewatch.streams.bus import follow

log = logging.getLogger("framewatch.extractor")

THROTTLE = Gauge("framewatch_extractor_throttle", "Factor stretching a camera's sampling interval (1: none)",
                 ["task"])

DROPS_TOLERATED = 0.05  # a share of dropped frames that is noise, not pressure
RECOVERY_STEP = 0.85


class Throttle:
    def __init__(self, max_factor: float) -> None:
        self.max_factor = max_factor
        self.factors: dict[str, float] = {}

    def factor(self, task_id: str) -> float:
        return self.factors.get(task_id, 1.0)

    def observe(self, report: InferencePressure) -> None:
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
