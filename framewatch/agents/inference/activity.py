"""What this worker saw of each camera's frames (the dashboard's camera rows and `/api/stats` read it), forgotten
once a camera has been silent for a while. Synchronous; the scheduler mirrors the freshness modes into metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from framewatch.schemas.events import FrameEvent
from framewatch.schemas.tasks import Freshness


@dataclass
class CameraSeen:
    task_id: str
    frames: int = 0
    inferred: int = 0
    last_captured_at: int = 0  # on the broker's clock
    freshness: Freshness = Freshness.LATEST  # of its last frame
    last_seen: float = field(default_factory=time.monotonic)


class CameraActivity:
    def __init__(self) -> None:
        self.cameras: dict[str, CameraSeen] = {}

    def saw(self, frame: FrameEvent, at: float) -> bool:
        """Counts a camera's frame; returns whether it is the camera's first or its freshness mode changed."""
        seen = self.of(frame)
        seen.last_seen = at
        seen.frames += 1
        seen.last_captured_at = max(seen.last_captured_at, frame.captured_on_broker_clock)
        if seen.freshness is frame.freshness and seen.frames > 1:
            return False
        seen.freshness = frame.freshness
        return True

    def of(self, frame: FrameEvent) -> CameraSeen:
        seen = self.cameras.get(frame.camera_id)
        if seen is None:
            seen = self.cameras[frame.camera_id] = CameraSeen(frame.task_id)
        return seen

    def forget(self, horizon: float) -> list[CameraSeen]:
        """Cameras silent since `horizon` leave; returns them."""
        silent = {camera_id: seen for camera_id, seen in self.cameras.items() if seen.last_seen < horizon}
        for camera_id in silent:
            del self.cameras[camera_id]
        return list(silent.values())
