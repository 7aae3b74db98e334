"""A tally is read by framewatch itself and scraped by Prometheus: both see the same values."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from framewatch.metrics import Tally


def test_a_tally_totals_by_label_and_is_scraped_with_the_same_values() -> None:
    registry = CollectorRegistry()
    frames = Tally("framewatch_test_frames_total", "Frames by outcome", ["outcome", "reason"], registry=registry)
    frames.labels("dropped", "stale").inc()
    frames.labels("dropped", "superseded").inc(2)
    frames.labels("inferred", "").inc(5)
    assert frames.total() == 8 and frames.total(outcome="dropped") == 3 and frames.total(reason="stale") == 1
    assert frames.total(outcome="failed") == 0
    scraped = generate_latest(registry).decode()
    assert 'framewatch_test_frames_total{outcome="dropped",reason="superseded"} 2.0' in scraped
    assert "# TYPE framewatch_test_frames_total counter" in scraped


def test_a_tally_refuses_what_a_counter_refuses() -> None:
    registry = CollectorRegistry()
    stored = Tally("framewatch_test_stored_total", "Stored", registry=registry)
    stored.inc(3)
    assert stored.total() == 3 and "framewatch_test_stored_total 3.0" in generate_latest(registry).decode()
    with pytest.raises(ValueError, match="only goes up"):
        stored.inc(-1)
    with pytest.raises(ValueError, match="has labels"):
        Tally("framewatch_test_other_total", "Other", ["a"], registry=registry).labels("x", "y")
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Tally("framewatch_test_stored_total", "Stored again", registry=registry)
