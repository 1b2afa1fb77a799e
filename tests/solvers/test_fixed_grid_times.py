"""The fixed grid from ``step_size`` is torchdiffeq's, bit for bit, although odekern builds it
on Python floats (no tensor arithmetic, no device read).

Reference: torchdiffeq's own grid constructor (``arange(n) * step_size + t[0]`` in ``t``'s
dtype, last point ``t[-1]``), called on the same ``t``; the step sizes against ``grid[1:] -
grid[:-1]`` in that dtype. Fuzzed over spans, signs, magnitudes and step sizes with hypothesis.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchdiffeq._impl.solvers import FixedGridODESolver

from odekern.solvers.fixed_grid import grid_and_values_from_step_size, rounding_to
from odekern.testing import assert_close

FUZZ = settings(max_examples=400, deadline=None, derandomize=True)


def _torchdiffeq_grid(t: torch.Tensor, step_size: float) -> torch.Tensor:
    return FixedGridODESolver._grid_constructor_from_step_size(step_size)(None, None, t)


@st.composite
def spans(draw):
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    scale = 10.0 ** draw(st.integers(-3, 4))
    start = draw(st.floats(-1.0, 1.0)) * scale
    length = draw(st.floats(1e-3, 2.0)) * scale
    t = torch.tensor([start, start + length], dtype=dtype)
    if not t[1] > t[0]:
        t[1] = torch.nextafter(t[0], t[0] + 1)
    span = float(t[1] - t[0])
    step_size = draw(st.one_of(st.just(0.1), st.just(1 / 3), st.floats(span / 300, span * 1.5),
                               st.integers(1, 300).map(lambda n: span / n)))
    return t, step_size


@FUZZ
@given(spans())
def test_grid_is_torchdiffeqs_bit_for_bit(case):
    t, step_size = case
    grid, values = grid_and_values_from_step_size(t, step_size, t.tolist())
    want = _torchdiffeq_grid(t, step_size).tolist()
    # torchdiffeq keeps a point that rounds onto or past t[-1] (then steps back by ~1 ulp);
    # odekern drops it, which is the only intended difference.
    want = [v for v in want[:-1] if v < want[-1]] + want[-1:]
    assert grid.dtype == t.dtype and grid.tolist() == values == want
    rounded = rounding_to(t.dtype)
    steps = [rounded(b - a) for a, b in zip(values[:-1], values[1:])]
    assert steps == (grid[1:] - grid[:-1]).tolist()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_times_take_torchs_arithmetic(dtype):
    """No Python rounding for float16/bfloat16 times: the grid comes from tensor operations."""
    assert rounding_to(dtype) is None
    t = torch.tensor([0.0, 1.0], dtype=dtype)
    grid, values = grid_and_values_from_step_size(t, 0.1, t.tolist())
    assert grid.tolist() == values == _torchdiffeq_grid(t, 0.1).tolist()


def test_differentiated_times_keep_their_gradient():
    t = torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True)
    grid, values = grid_and_values_from_step_size(t, 0.25, t.tolist())
    assert values == _torchdiffeq_grid(t.detach(), 0.25).tolist()
    (d_t,) = torch.autograd.grad(grid.sum(), t)
    n = len(values)
    assert d_t.tolist() == [n - 1, 1.0]  # every point but the last moves with t[0]; the last is t[-1]


def test_times_near_float32s_limit():
    """A grid near float32's largest value is still torchdiffeq's; a span that overflows float32
    is refused by name, not left to fail inside the point count's ceil."""
    big = float(torch.finfo(torch.float32).max)
    t = torch.tensor([-big, -big / 2], dtype=torch.float32)
    step = abs(float(t[1] - t[0])) / 4
    grid, values = grid_and_values_from_step_size(t, step, t.tolist())
    assert values == _torchdiffeq_grid(t, step).tolist() and all(math.isfinite(v) for v in values)
    wide = torch.tensor([-big, big], dtype=torch.float32)
    for requires_grad in (False, True):  # both ways of building the grid
        with pytest.raises(ValueError, match=r"t's span .* overflows torch.float32"):
            grid_and_values_from_step_size(wide.clone().requires_grad_(requires_grad), big / 2, wide.tolist())


@pytest.mark.parametrize("method, tolerance", [("rk4", 1e-6), ("midpoint", 3e-3)])
@pytest.mark.parametrize("direction", [1.0, -1.0], ids=["increasing", "decreasing"])
def test_output_times_on_grid_points_get_the_solutions_time_derivative(method, tolerance, direction):
    """An inner output time equal to a step_size grid point is that point: the steps on either
    side move with it, so d y(t_j) / d t_j is the solution's slope (and d y(t_j) / d t_0 its
    negative) to the method's order. As a point t[0] + k * step_size it did not move, and both
    derivatives were 0 (torchdiffeq's grid). Oracle: the exact solution of y' = -w y; values
    are torchdiffeq's (to rounding). Reverse mode and forward mode (jacfwd) alike."""
    import torchdiffeq

    import odekern

    w = 0.8
    y0 = torch.tensor([1.3, -0.4], dtype=torch.float64)
    times = direction * torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)  # 0.5 = 10 steps of 0.05
    options = {"step_size": 0.05}
    solve = lambda tt: odekern.odeint(lambda t, y: -w * y, y0, tt, method=method, options=options)  # noqa: E731
    exact = y0 * torch.exp(-w * (times - times[0]))[:, None]  # [time, element]
    want = torch.zeros(3, 2, 3, dtype=torch.float64)  # d y(t_j)[e] / d t_k
    for j in (1, 2):
        want[j, :, j] = -w * exact[j]
        want[j, :, 0] = w * exact[j]
    got = torch.autograd.functional.jacobian(solve, times)
    assert (got - want).abs().max().item() < tolerance
    got_forward = torch.func.jacfwd(solve)(times)
    assert (got_forward - want).abs().max().item() < tolerance
    reference = torchdiffeq.odeint(lambda t, y: -w * y, y0, times, method=method, options=options)
    assert_close(solve(times.clone().requires_grad_()).detach(), reference)


@pytest.mark.parametrize("method", ["implicit_adams", "explicit_adams"])
def test_multistep_time_derivatives_warn_and_the_adjoints_are_right(method):
    """Backprop through Adams' constant-step weights differentiates a moved inner time point
    into nonsense (torchdiffeq's too): odeint warns when inner times are differentiated, and
    odeint_adjoint, which does not warn, gives the exact solution's derivatives."""
    import odekern

    w = 0.8

    class Decay(torch.nn.Module):
        def forward(self, t, y):
            return -w * y

    y0 = torch.tensor([1.3], dtype=torch.float64)
    times = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    with pytest.warns(UserWarning, match="use odeint_adjoint for derivatives with respect to t"):
        odekern.odeint(Decay(), y0, times.clone().requires_grad_(), method=method)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        odekern.odeint(Decay(), y0, times[[0, -1]].clone().requires_grad_(), method=method)  # no inner time
        odekern.odeint(Decay(), y0, times, method=method)  # t not differentiated
        solve = lambda tt: odekern.odeint_adjoint(Decay(), y0, tt, method=method,  # noqa: E731
                                                  options={"step_size": 0.05}, adjoint_params=())[:, 0]
        got = torch.autograd.functional.jacobian(solve, times)
    exact = y0 * torch.exp(-w * times)
    want = torch.zeros(3, 3, dtype=torch.float64)
    for j in (1, 2):
        want[j, j], want[j, 0] = -w * exact[j], w * exact[j]
    assert (got - want).abs().max().item() < 1e-3
