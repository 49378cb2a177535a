"""CommitWindow: deliveries finish out of order, the committed position never passes one that
is still open, and a partition's position is None until something in it is done."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from embark.queue.offsets import CommitWindow


def test_position_stops_at_the_first_open_offset() -> None:
    w = CommitWindow()
    for offset in (5, 6, 7):
        w.handed_out(0, offset)
    assert w.position(0) is None
    w.done(0, 6)
    w.done(0, 7)
    assert w.position(0) == 5  # 5 is in retry: nothing past it may be committed
    w.done(0, 5)
    assert w.position(0) == 8
    assert w.outstanding(0) == 0


def test_partitions_are_independent_and_forgotten_on_revocation() -> None:
    w = CommitWindow()
    w.handed_out(0, 1)
    w.handed_out(1, 10)
    w.done(1, 10)
    assert (w.position(0), w.position(1)) == (None, 11)
    w.forget(1)
    assert w.position(1) is None


@given(st.permutations(list(range(20))), st.integers(0, 19))
def test_never_commits_past_an_open_offset(order: list[int], still_open: int) -> None:
    w = CommitWindow()
    for offset in range(20):
        w.handed_out(0, offset)
    for offset in order:
        if offset != still_open:
            w.done(0, offset)
            position = w.position(0)
            assert position is not None
            assert position <= still_open
    w.done(0, still_open)
    assert w.position(0) == 20
