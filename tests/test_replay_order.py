"""Invariants of :class:`pytest_psyduck.ordering.InOrder`, the in-order replay of ``-x``/``--sw``.

Whatever order workers finish tests in, and wherever the session stops, the
tests shown are exactly the collection order up to the stopping point.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pytest_psyduck.ordering import InOrder


@st.composite
def runs(draw):
    """Test ids in collection order, the order their results arrive (some never do),
    and after how many shown results the session stops (None: it does not)."""
    count = draw(st.integers(min_value=0, max_value=60))
    order = [f"test_mod.py::test_{i}" for i in range(count)]
    arriving = draw(st.permutations(order))
    lost = draw(st.sets(st.sampled_from(order))) if order else set()
    stop_after = draw(st.none() | st.integers(min_value=1, max_value=max(count, 1)))
    return order, [key for key in arriving if key not in lost], lost, stop_after


def replay(held: InOrder[int], shown: list[str], stop_after: int | None, wait: bool) -> bool:
    """Release what is ready, as the replay does; True once the session stopped."""
    while stop_after is None or len(shown) < stop_after:
        ready = held.pop(wait)
        if ready is None:
            return False
        shown.append(ready[0])
    held.drop()
    return True


@given(runs())
def test_results_are_shown_in_collection_order_up_to_the_stop(run):
    order, arriving, lost, stop_after = run
    held: InOrder[int] = InOrder(order)
    shown: list[str] = []
    stopped = False
    for value, key in enumerate(arriving):
        held.arrive(key, value)
        if not stopped:
            stopped = replay(held, shown, stop_after, wait=True)
        # Never past a test whose result is still to come (a lost one holds all after it).
        assert shown == order[: len(shown)]
    if not stopped:
        replay(held, shown, stop_after, wait=False)
    expected = [key for key in order if key not in lost]
    if stop_after is not None:
        expected = expected[:stop_after]
    assert shown == expected


def test_a_result_waits_for_the_tests_before_it():
    held: InOrder[str] = InOrder(["a", "b", "c"])
    held.arrive("c", "C")
    assert held.pop(wait=True) is None
    held.arrive("a", "A")
    assert held.pop(wait=True) == ("a", "A")
    assert held.pop(wait=True) is None
    assert held.pop(wait=False) == ("c", "C")  # b never came
    assert held.pop(wait=False) is None
