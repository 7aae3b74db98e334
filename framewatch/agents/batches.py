"""The batch window of the worker's stream (`WorkerStream.batches`, agents/faust_overrides.py).

Faust's `take(max_, within)` starts its timer when the loop asks for the next batch, so a value that arrives just
after that waits the whole window, plus the handling of the batch before it when it arrived during that. Here the
window opens at the batch's first record's timestamp (a record `Topology.emit` sent carries its event's
`emitted_at`), or when it arrived if that is earlier (a producer whose clock runs ahead): no value waits longer than
`within` after it was made, the hops to here included, and a full batch goes at once.

`BatchWindow` is that rule alone, in the shape of Bytewax's `StatefulLogic` (`on_item`, `notify_at`, `on_notify`):
no Faust, no event loop, the times given by the caller.
"""

from __future__ import annotations

from typing import Generic, TypeVar

Item = TypeVar("Item")


class BatchWindow(Generic[Item]):
    """At most `size` items, due once full or `within` seconds after the window opened (at its first item)."""

    def __init__(self, size: int, within: float) -> None:
        self.size = size
        self.within = within
        self.items: list[Item] = []
        self.opened_at = 0.0

    def on_item(self, item: Item, made_at: float) -> bool:
        """Adds the item; the first one opens the window at `made_at`. True once the batch is full."""
        if not self.items:
            self.opened_at = made_at
        self.items.append(item)
        return self.full

    @property
    def full(self) -> bool:
        return len(self.items) >= self.size

    def notify_at(self) -> float | None:
        """When the batch is due unless full before: `within` after the window opened; None while empty."""
        return self.opened_at + self.within if self.items else None

    def on_notify(self) -> list[Item]:
        """The batch, handed on; the window is empty again."""
        batch, self.items = self.items, []
        return batch
