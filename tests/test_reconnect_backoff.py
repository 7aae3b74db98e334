"""A camera's waits between failed sessions come from the one retry policy, `Backoff` with jitter: the same waits
as the loop computed itself before (min doubling to max, times a random 0.5–1), and no jitter unless asked for."""

from __future__ import annotations

import random

import pytest

from framewatch.retry import Backoff
from framewatch.schemas.config import FrameExtractorSettings
from framewatch.streams.camera import reconnect_backoff


def old_camera_wait_s(settings: FrameExtractorSettings, failures: int) -> float:
    """What streams/camera.py computed before it used `Backoff`."""
    delay = min(settings.reconnect_max_sec, settings.reconnect_min_sec * 2 ** (failures - 1))
    return delay * random.uniform(0.5, 1.0)


@pytest.mark.parametrize(("low", "high"), [(1.0, 30.0), (0.5, 2.0)])
def test_reconnect_waits_are_what_the_camera_computed_before(low: float, high: float) -> None:
    settings = FrameExtractorSettings(reconnect_min_sec=low, reconnect_max_sec=high)
    random.seed(11)
    before = [old_camera_wait_s(settings, failures) for failures in range(1, 10)]
    random.seed(11)
    now = [reconnect_backoff(settings).wait_s(failures) for failures in range(1, 10)]
    assert now == before


def test_jitter_shortens_a_wait_by_at_most_its_part() -> None:
    backoff = Backoff(first_s=1.0, max_s=8.0, jitter=0.5)
    for attempt, full_s in [(1, 1.0), (2, 2.0), (4, 8.0), (9, 8.0)]:
        waits = [backoff.wait_s(attempt) for _ in range(200)]
        assert all(full_s * 0.5 <= wait <= full_s for wait in waits)
        assert len(set(waits)) > 1


def test_without_jitter_waits_are_exact_and_draw_no_random_number() -> None:
    random.seed(3)
    expected_next = random.random()
    random.seed(3)
    assert [Backoff(first_s=0.4, max_s=1.6).wait_s(a) for a in (1, 2, 3, 4)] == [0.4, 0.8, 1.6, 1.6]
    assert random.random() == expected_next
