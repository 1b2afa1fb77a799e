"""``odekern.odeint_dense`` (torchdiffeq's API): the dense output of a whole adaptive solve."""

from __future__ import annotations

import pytest
import torch
import torchdiffeq

import odekern
from odekern.testing import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


def _oscillator(t, y):
    return torch.stack([y[1], -y[0]])


def test_dense_output_matches_torchdiffeq_and_the_exact_solution():
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    times = [0.0, 0.37, 1.5, 2.999]
    ours = odekern.odeint_dense(_oscillator, y0, torch.tensor(0.0, dtype=F64), torch.tensor(3.0, dtype=F64))
    theirs = torchdiffeq.odeint_dense(_oscillator, y0, torch.tensor(0.0, dtype=F64), torch.tensor(3.0, dtype=F64))
    for x in times:
        te = torch.tensor(x, dtype=F64)
        assert_close(ours(te), theirs(te), kind="cross")
    batch = ours(torch.tensor(times, dtype=F64))
    exact = torch.stack([torch.cos(torch.tensor(times, dtype=F64)), -torch.sin(torch.tensor(times, dtype=F64))], -1)
    assert batch.shape == (4, 2)
    assert_close(batch, exact, kind="cross")


def test_dense_output_backward_in_time_and_its_range():
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    dense = odekern.odeint_dense(_oscillator, y0, 3.0, 0.0)
    times = torch.tensor([3.0, 1.2, 0.0], dtype=F64)
    exact = torch.stack([torch.cos(times - 3.0), -torch.sin(times - 3.0)], -1)
    assert_close(dense(times), exact, kind="cross")
    with pytest.raises(ValueError, match=r"t_eval must lie in \[0, 3\]"):
        dense(torch.tensor(3.5, dtype=F64))
    # A NaN time is no time in the range (it came back as a NaN solution, without a word).
    with pytest.raises(ValueError, match=r"t_eval must lie in \[0, 3\], got \[nan\]"):
        dense(torch.tensor([1.2, float("nan")], dtype=F64))
    with pytest.raises(ValueError, match=r"got \[nan\]"):
        dense(float("nan"))


def test_dense_output_needs_an_adaptive_method():
    with pytest.raises(ValueError, match=r"odeint_dense needs an adaptive method"):
        odekern.odeint_dense(_oscillator, torch.ones(2), 0.0, 1.0, method="rk4")


def test_times_given_as_numbers_keep_a_float64_states_precision():
    """0.1 and 1.3 are not float32 numbers: the solve starts at 0.1 itself and covers [0.1, 1.3]
    exactly (as a tensor t0 in float64 does), not their float32 roundings."""
    seen = []

    def func(t, y):
        seen.append(float(t))
        return _oscillator(t, y)

    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    dense = odekern.odeint_dense(func, y0, 0.1, 1.3)
    assert seen[0] == 0.1
    assert_close(dense(torch.tensor(1.3, dtype=F64)), odekern.odeint_dense(
        _oscillator, y0, torch.tensor(0.1, dtype=F64), torch.tensor(1.3, dtype=F64))(torch.tensor(1.3, dtype=F64)))
    with pytest.raises(ValueError, match="t_eval must lie in"):
        dense(torch.tensor(1.3 + 1e-12, dtype=F64))  # 1.3 in float32 is 1.3000000477
