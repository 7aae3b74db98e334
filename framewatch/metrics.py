"""`Tally`: a counter framewatch reads itself (the worker's `/api/stats`, the demo) and Prometheus scrapes.

The figures a process reports about itself live here, once: Prometheus derives its samples from the tally when it
collects, so the stats snapshot never scrapes the registry by metric name (a renamed metric cannot break it)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import accumulate
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector


class Tally(Collector):
    """A Prometheus counter (same `labels(...).inc()` use) whose totals are read with `total(**labels)`."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 registry: CollectorRegistry = REGISTRY) -> None:
        self.name = name.removesuffix("_total")
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._values: dict[tuple[str, ...], float] = {} if self.labelnames else {(): 0.0}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, *values: str) -> TallyChild:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} has labels {self.labelnames}, given {values}")
        return TallyChild(self, tuple(str(v) for v in values))

    def inc(self, amount: float = 1) -> None:
        if self.labelnames:
            raise ValueError(f"{self.name} is counted by {self.labelnames}: use labels(...).inc()")
        self._add((), amount)

    def _add(self, key: tuple[str, ...], amount: float) -> None:
        if amount < 0:
            raise ValueError("a tally only goes up")
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def total(self, **labels: str) -> float:
        """The sum over every label set matching `labels` (all of them when none is given)."""
        positions = {self.labelnames.index(name): value for name, value in labels.items()}
        with self._lock:
            return sum(value for key, value in self._values.items()
                       if all(key[i] == wanted for i, wanted in positions.items()))

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            for key, value in self._values.items():
                family.add_metric(list(key), value)
        yield family


class TallyChild:
    def __init__(self, tally: Tally, key: tuple[str, ...]) -> None:
        self._tally = tally
        self._key = key

    def inc(self, amount: float = 1) -> None:
        self._tally._add(self._key, amount)


LOOP_LAG = Histogram("framewatch_event_loop_lag_seconds", "How late the event loop ran a task due now: its work "
                     "between awaits (a blocking call shows here)",
                     buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5))
LOOP_LAG_PERIOD_S = 0.25


async def watch_loop_lag() -> None:
    """Until cancelled: every 250 ms, how much later than asked a sleep ended."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + LOOP_LAG_PERIOD_S
        await asyncio.sleep(LOOP_LAG_PERIOD_S)
        LOOP_LAG.observe(max(0.0, loop.time() - asked))


class CollectionPauses(Collector):
    """`framewatch_gc_pause_seconds`: how long each run of Python's cyclic garbage collector stopped the process
    (every thread), by generation. Counted in plain lists, not a prometheus_client Histogram: the collector may run
    inside any allocation, also one made while that Histogram holds its lock, and observing it then would deadlock.
    Collections never overlap (CPython runs no second one while the callbacks of one run)."""

    NAME = "framewatch_gc_pause_seconds"
    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

    def __init__(self) -> None:
        self._started = 0.0
        self._counts = [[0] * (len(self.BUCKETS) + 1) for _ in range(3)]
        self._sums = [0.0] * 3

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        seconds = time.perf_counter() - self._started
        generation = info["generation"]
        self._counts[generation][bisect_left(self.BUCKETS, seconds)] += 1
        self._sums[generation] += seconds

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.NAME, "Time one garbage collection stopped the process",
                                       labels=["generation"])
        bounds = [str(b) for b in self.BUCKETS] + ["+Inf"]
        for generation, counts in enumerate(self._counts):
            family.add_metric([str(generation)], list(zip(bounds, accumulate(counts))),
                              sum_value=self._sums[generation])
        yield family


GC_PAUSES = CollectionPauses()
REGISTRY.register(GC_PAUSES)
gc.callbacks.append(GC_PAUSES)
