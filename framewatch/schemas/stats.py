"""`WorkerStats`: one worker's figures at one moment, as `/api/stats` answers and the demo reads them.

The totals come from the worker's tallies (`framewatch/metrics.py`), the same values /metrics exposes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class WorkerStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    partitions_assigned: int = 0
    services_alive: int = 0
    requests: float = 0  # to algorithm services
    responses: float = 0
    failures: float = 0
    queue_size: int = 0  # frames waiting for inference
    queue_max: int = 0  # the most that waited at once
    max_size: int = 0  # the bound
    in_flight: int = 0
    processed_total: float = 0  # frames inferred
    dropped_total: float = 0
    failed_total: float = 0
    frames_evaluated: float = 0  # by the rules
    alerts_raised: float = 0
    alerts_relocated: float = 0  # images copied to their alert key
    relocation_dead_letters: float = 0
    alerts_stored: float = 0  # newly stored in PostgreSQL
    alerts_published: float = 0
    frames_deleted: float = 0
    freshness: dict[str, str] = {}  # per camera: the freshness its frames asked for
