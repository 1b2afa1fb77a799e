"""The binomial checkpoint schedule against a brute-force search for the fewest recomputed steps."""

from functools import lru_cache

import pytest

from odekern.solvers import checkpoint_schedule as schedule


@lru_cache(maxsize=None)
def fewest_recomputed_steps(n: int, slots: int) -> int:
    """Exhaustive minimum over every first split (independent of the binomial theory)."""
    if n <= 1:
        return 0
    if slots <= 1:
        return sum(range(n))  # replay from the start for every step
    return min(m + fewest_recomputed_steps(n - m, slots - 1) + fewest_recomputed_steps(m, slots)
               for m in range(1, n))


@pytest.mark.parametrize("slots", [1, 2, 3, 4, 6])
def test_schedule_is_optimal(slots):
    for n in range(1, 90):
        assert schedule.recomputed_steps(n, slots) == fewest_recomputed_steps(n, slots), (n, slots)
        if slots >= 2 and n >= 2:
            r = schedule.repetitions(n, slots)
            assert schedule.recomputed_steps(n, slots) == r * n - schedule.max_steps(slots + 1, r - 1)


@pytest.mark.parametrize("n,slots", [(4, 4), (5, 4), (64, 4), (64, 10), (3, 1), (100, 2)])
def test_first_sweep_stays_within_the_slots(n, slots):
    first = schedule.first_sweep(n, slots)
    assert first == sorted(first) and all(0 < i < n for i in first)
    assert len(first) <= slots - 1  # the initial state takes the remaining slot
    if n <= slots:
        assert first == list(range(1, n))  # enough slots: every state stored, none recomputed
        assert schedule.recomputed_steps(n, slots) == n - 1
