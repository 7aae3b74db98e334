"""A tally is read by framewatch itself and scraped by Prometheus: both see the same values. Garbage collections
are timed, and a started process's heap is out of their sight."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from framewatch.metrics import CollectionPauses, Tally
from framewatch.process import settle_heap


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


@pytest.fixture
def pauses() -> Iterator[tuple[CollectionPauses, CollectorRegistry]]:
    registry = CollectorRegistry()
    timer = CollectionPauses()
    registry.register(timer)
    gc.callbacks.append(timer)
    yield timer, registry
    gc.callbacks.remove(timer)


def test_every_garbage_collection_is_timed_by_generation(pauses: tuple[CollectionPauses, CollectorRegistry]) -> None:
    timer, registry = pauses
    cycles: list[list[object]] = [[] for _ in range(10_000)]
    for cycle in cycles:
        cycle.append(cycle)
    del cycles
    gc.collect(2)
    gc.collect(2)
    (family,) = text_string_to_metric_families(generate_latest(registry).decode())
    assert family.name == "framewatch_gc_pause_seconds" and family.type == "histogram"
    full = [s for s in family.samples if s.labels["generation"] == "2"]
    count = next(s.value for s in full if s.name.endswith("_count"))
    buckets = [s.value for s in full if s.name.endswith("_bucket")]
    assert count >= 2 and buckets[-1] == count and buckets == sorted(buckets)
    assert next(s.value for s in full if s.name.endswith("_sum")) > 0


def test_a_settled_heap_is_out_of_the_collectors_sight() -> None:
    started = [[index] for index in range(50_000)]  # what a process holds once it has started
    try:
        settle_heap()
        assert gc.get_freeze_count() >= len(started)
        watched = {id(o) for generation in range(3) for o in gc.get_objects(generation)}
        assert id(started) not in watched and id(started[-1]) not in watched
        later = [[1]]
        assert id(later) in {id(o) for o in gc.get_objects(0)}  # what comes after is collected as before
    finally:
        gc.unfreeze()
