"""The batch window alone (`agents/batches.py`): no Faust, the times given."""

from __future__ import annotations

from framewatch.agents.batches import BatchWindow


def test_an_empty_window_is_never_due() -> None:
    window: BatchWindow[str] = BatchWindow(size=3, within=0.5)
    assert window.notify_at() is None and not window.full
    assert window.on_notify() == []


def test_the_window_opens_when_its_first_item_was_made() -> None:
    window: BatchWindow[str] = BatchWindow(size=3, within=0.5)
    assert window.on_item("a", made_at=100.0) is False
    assert window.on_item("b", made_at=100.4) is False
    assert window.notify_at() == 100.5, "the later item does not move the window"


def test_a_full_window_says_so_and_hands_on_exactly_its_size() -> None:
    window: BatchWindow[int] = BatchWindow(size=2, within=0.5)
    window.on_item(1, made_at=10.0)
    assert window.on_item(2, made_at=10.1) is True and window.full
    assert window.on_notify() == [1, 2]
    assert window.notify_at() is None and not window.full


def test_the_next_batch_opens_its_own_window() -> None:
    window: BatchWindow[int] = BatchWindow(size=5, within=1.0)
    window.on_item(1, made_at=10.0)
    window.on_notify()
    window.on_item(2, made_at=12.5)
    assert window.notify_at() == 13.5
