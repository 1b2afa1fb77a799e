"""Where gradient mode "checkpoint" stores states: the binomial (revolve) schedule.

Problem: reverse ``n`` steps holding at most ``slots`` trajectory states at once (the segment's
start state occupies one of them), recomputing the others forward from stored states. The
optimal number of recomputed steps (Griewank & Walther's binomial checkpointing) follows from

    beta(slots, r) = C(slots + r, slots),

the most steps ``slots`` states can reverse when no step is recomputed more than ``r`` times.
Let ``r`` be the smallest repetition count with ``beta(slots, r) >= n``. Advancing from the segment
start to ``m`` and storing that state splits the work into a right part (``n - m`` steps,
``slots - 1`` free slots) and a left part (``m`` steps, all ``slots``, its steps already advanced
once more). The cost of the optimum is convex and piecewise linear in ``n``, with slope ``r`` on
``(beta(slots, r - 1), beta(slots, r)]``:

    recomputed_steps(n, slots) = r * n - beta(slots + 1, r - 1)        (slots >= 2)

so a split is optimal when the left part lies on its slope ``r - 1`` piece and the right part on
its slope ``r`` piece (equal marginal cost on both sides). Consequences (the cost formula and
the splits are tested against a brute-force search):

- ``n <= slots``: every state is computed once (``r = 1``), nothing is recomputed twice;
- otherwise each step is recomputed at most ``r`` times, ``r ~ (n * slots!)^(1/slots)``
  for large ``n`` (64 steps: r = 4 with 4 slots, r = 3 with 6 slots, r = 2 with 10 slots);
- ``slots = 1``: every step is replayed from the start, ``n (n - 1) / 2`` steps.
"""

from __future__ import annotations

from functools import lru_cache
from math import comb


def max_steps(slots: int, repetitions: int) -> int:
    """``beta(slots, repetitions)``: steps reversible with this many slots and repetitions."""
    return comb(slots + repetitions, slots)


def repetitions(n: int, slots: int) -> int:
    """Smallest ``r`` with ``max_steps(slots, r) >= n``: no step is recomputed more often."""
    r = 0
    while max_steps(slots, r) < n:
        r += 1
    return r


def _beta(slots: int, repetitions: int) -> int:
    return max_steps(slots, repetitions) if repetitions >= 0 else 0


def split(n: int, slots: int) -> int:
    """Where to store the next state when reversing ``n >= 2`` steps with ``slots >= 2`` slots: the
    number of steps from the segment start (1 <= m < n) of an optimal binomial split."""
    r = repetitions(n, slots)
    lowest = max(1, n - _beta(slots - 1, r), _beta(slots, r - 2))
    highest = min(n - 1, _beta(slots, r - 1), n - _beta(slots - 1, r - 1))
    assert lowest <= highest, (n, slots)  # non-empty for every n >= 2, slots >= 2 (tested)
    # Every m in [lowest, highest] costs the same number of recomputed steps; take the largest.
    return highest


@lru_cache(maxsize=4096)
def recomputed_steps(n: int, slots: int) -> int:
    """Steps this schedule advances (without recording) to reverse ``n`` steps from the stored
    segment start; the recorded step per reversed step is not counted."""
    if n <= 1:
        return 0
    if slots <= 1:
        return n * (n - 1) // 2
    m = split(n, slots)
    return m + recomputed_steps(n - m, slots - 1) + recomputed_steps(m, slots)


def first_sweep(n: int, slots: int) -> list[int]:
    """The states (step indices) the schedule stores first, before any step is reversed: they lie
    on the forward trajectory in increasing order, so the forward solve can store them on its way
    and the backward pass starts without recomputing them."""
    stored, start = [], 0
    while n - start >= 2 and slots >= 2:
        start += split(n - start, slots)
        stored.append(start)
        slots -= 1
    return stored
