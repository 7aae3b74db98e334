"""Why the alert sink is not a Faust windowed table (docs/architecture.md): a window that a worker rebuilds from
the table's changelog (after a crash or a rebalance) is never closed, so `on_window_close` never writes it out,
and the alerts in it, acked when they were added, would never reach the database."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, cast

import faust
from faust.tables.base import Collection
from faust.types import EventT


async def test_a_window_recovered_from_the_changelog_is_never_closed() -> None:
    app = faust.App("windows-check", store="memory://")
    closed: list[tuple[Any, Any]] = []
    window = app.Table("alert-batches", default=int, partitions=1,
                       on_window_close=lambda key, value: closed.append((key, value))).tumbling(1.0, expires=1.0)
    table = cast(Collection, window.table)
    start = float(int(time.time()) - 10)  # a window that ended ten seconds ago, long expired
    key = ["cam-1", [start, start + 0.999]]
    record = SimpleNamespace(key=key, value=3, partition=0)
    recovered = cast(EventT, SimpleNamespace(key=key, value=3, message=record))
    table.apply_changelog_batch([recovered])  # what recovery does
    assert table.data == {("cam-1", (start, start + 0.999)): 3}  # the window is back, with its alerts

    await table._del_old_keys()  # what Faust's expiry timer runs
    assert closed == []  # never closed, never written out
    assert ("cam-1", (start, start + 0.999)) in table.data  # and never dropped either
