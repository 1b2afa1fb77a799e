"""nmode_solve inputs that once gave silently wrong numbers: each now raises a clear error.

- a fixed grid beyond the step budget (the count overflowed before it was checked, or the
  grid exhausted memory, or the reference looped for ever);
- the continuous adjoint over a long span, whose backward re-solve of y grows like
  e^(t1 - t0) until the fast sin^2 leaves its exact range (NaN gradients before);
- states beyond the fused sine's exact range (garbage sines before, and misleading errors);
- atol = 0 where y0 is 0 (0/0 error ratios).
"""

from __future__ import annotations

import pytest
import torch
from nmode_backends import require_available

import odekern
from odekern.ops.nmode_solve import fast_sine
from odekern.solvers import NonFiniteError, SolveError
from odekern.testing import assert_close, randn


@pytest.mark.parametrize("t1, step_size", [(1e19, 1e-3), (1e9, 1e-3), (1.0, 1e-300)])
def test_fixed_grid_beyond_the_step_budget_raises_before_solving(backend, t1, step_size):
    y = randn(4, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="max_num_steps=100000"):
        odekern.nmode_solve(y, y, 0.0, t1, method="euler", step_size=step_size, backend=backend)


def test_step_budget_counts_the_grid_exactly(backend):
    y = randn(5, dtype=torch.float64)
    odekern.nmode_solve(y, y, 0.0, 1.0, method="euler", step_size=0.1, max_num_steps=10, backend=backend)
    with pytest.raises(RuntimeError, match="max_num_steps=9"):
        odekern.nmode_solve(y, y, 0.0, 1.0, method="euler", step_size=0.1, max_num_steps=9, backend=backend)


@pytest.mark.parametrize("dtype, t1", [(torch.float32, 40.0), (torch.float64, 100.0)])
@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_adjoint_over_a_span_it_cannot_resolve_raises(dtype, t1, method):
    require_available("cpu")
    y0 = torch.rand(64, dtype=dtype, generator=torch.Generator().manual_seed(0)).requires_grad_()
    g = torch.rand(64, dtype=dtype, generator=torch.Generator().manual_seed(1)).requires_grad_()
    y1 = odekern.nmode_solve(y0, g, 0.0, t1, method=method, step_size=0.1, gradient="adjoint", backend="cpu")
    with pytest.raises(NonFiniteError, match="gradient='checkpoint'"):
        torch.autograd.grad(y1.sum(), (y0, g))
    # The exact gradient over the same span is finite (the forward itself is stable).
    y1 = odekern.nmode_solve(y0, g, 0.0, t1, method=method, step_size=0.1, gradient="checkpoint", backend="cpu")
    grads = torch.autograd.grad(y1.sum(), (y0, g))
    assert all(bool(torch.isfinite(x).all()) for x in grads)


def test_a_non_finite_incoming_gradient_passes_through():
    """AMP's GradScaler relies on inf gradients reaching the parameters to skip a step."""
    require_available("cpu")
    y0 = randn(8, dtype=torch.float32).requires_grad_()
    y1 = odekern.nmode_solve(y0, torch.zeros(8), 0.0, 0.5, gradient="adjoint", backend="cpu")
    grad, = torch.autograd.grad(y1, y0, torch.full((8,), float("inf")))
    assert not bool(torch.isfinite(grad).all())


SOLVES = {"rk4": dict(method="rk4", step_size=0.01), "dopri5": dict(method="dopri5"),
          "dopri5-per-element": dict(method="dopri5", control="per_element")}


@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # NumPy, in the Triton interpreter
@pytest.mark.parametrize("solve", SOLVES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("where", ["y0", "g"])
def test_inputs_beyond_the_fused_sine_range_are_named(backend, solve, dtype, where):
    """|y0 + g| beyond the fused kernels' sine range: every fused backend refuses with the input
    named (the Triton kernels returned a wrong sine there, a misleading 'non-finite step size'
    or 'step size underflow' came from the others); the reference (torch.sin) solves it."""
    reach = 4 * fast_sine.REDUCTIONS[dtype].range
    small = torch.linspace(0.1, 0.9, 16, dtype=dtype)
    big = torch.linspace(reach, 2 * reach, 16, dtype=dtype)
    y0, g = (big, small) if where == "y0" else (small, big)
    if backend == "reference":
        y1 = odekern.nmode_solve(y0, g, 0.0, 0.05, backend=backend, **SOLVES[solve])
        exact = odekern.nmode_solve(y0.double(), g.double(), 0.0, 0.05, backend=backend, method="dopri5",
                                    rtol=1e-10, atol=1e-12)
        # y + g rounded in dtype moves sin^2 by up to |y + g| eps, over a span of 0.05.
        rounding = 0.05 * 4 * torch.finfo(dtype).eps * float((y0 + g).abs().max())
        assert_close(y1.double(), exact, rtol=1e-6, atol=1e-6 + rounding)
        return
    with pytest.raises(ValueError, match=r"\|y0 \+ g\| reaches .* beyond .*backend='reference'"):
        odekern.nmode_solve(y0, g, 0.0, 0.05, backend=backend, **SOLVES[solve])


@pytest.mark.parametrize("solve", SOLVES)
def test_inputs_at_the_edge_of_the_fused_sine_range_are_solved(backend, solve):
    """|y0 + g| up to the range itself is solved, and agrees with the reference (torch.sin)."""
    edge = fast_sine.FLOAT32.range
    y0 = edge - torch.linspace(0.0, 3.0, 16)
    g = edge - y0 - torch.linspace(0.0, 0.5, 16)  # y0 + g from the edge down to edge - 0.5
    ours = odekern.nmode_solve(y0, g, 0.0, 0.05, backend=backend, **SOLVES[solve])
    ref = odekern.nmode_solve(y0.double(), g.double(), 0.0, 0.05, backend="reference", method="dopri5",
                              rtol=1e-10, atol=1e-12)
    assert_close(ours.double(), ref, rtol=1e-5, atol=0)


@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # NumPy, in the Triton interpreter
@pytest.mark.parametrize("solve", ["dopri5", "dopri5-per-element"])
def test_zero_atol_where_y0_is_zero_is_refused_on_every_backend(backend, solve):
    """Every error ratio of an element at 0 is then 0/0: backends failed apart (a NaN first
    step named as a non-finite state; one returned a number), odeint refuses the same case."""
    y0 = torch.tensor([0.5, 0.0, 0.25], dtype=torch.float64)
    g = torch.full_like(y0, 0.3)
    with pytest.raises(ValueError, match="atol is 0 and y0 has elements equal to 0"):
        odekern.nmode_solve(y0, g, 0.0, 1.0, atol=0.0, backend=backend, **SOLVES[solve])
    # atol = 0 with no zero element is a pure relative tolerance and is solved.
    y0 = y0 + 0.1
    ours = odekern.nmode_solve(y0, g, 0.0, 1.0, atol=0.0, rtol=1e-9, backend=backend, **SOLVES[solve])
    ref = odekern.nmode_solve(y0, g, 0.0, 1.0, rtol=1e-12, atol=1e-14, backend="reference")
    assert_close(ours, ref, rtol=1e-7, atol=0)


@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # NumPy, in the Triton interpreter
@pytest.mark.parametrize("solve", ["dopri5", "dopri5-per-element"])
def test_an_exhausted_step_budget_is_a_solve_error_on_every_backend(backend, solve):
    """odeint's type for it (also a RuntimeError, and an AssertionError as torchdiffeq's), which
    the C++/CUDA kernels cannot raise themselves: the op gives their failures that type."""
    y = randn(4, 3, dtype=torch.float64)
    with pytest.raises(SolveError, match=r"max_num_steps \(2\) exceeded"):
        odekern.nmode_solve(y, y, 0.0, 50.0, max_num_steps=2, backend=backend, **SOLVES[solve])


@pytest.mark.parametrize("kw, match", [
    (dict(method="rk4", step_size=float("inf")), "step_size must be a finite number > 0"),
    (dict(atol=float("inf")), "atol must be a finite number >= 0"),
    (dict(rtol=float("inf")), "rtol must be a finite number >= 0"),
    (dict(rtol=0.0, atol=0.0), "rtol and atol cannot both be zero"),
])
def test_bad_options_are_refused_with_the_argument_named(kw, match):
    y = randn(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        odekern.nmode_solve(y, y, 0.0, 1.0, **kw)
