"""nmode_solve inputs that once gave silently wrong numbers: each now raises a clear error.

- a fixed grid beyond the step budget (the count overflowed before it was checked, or the
  grid exhausted memory, or the reference looped for ever);
- the continuous adjoint over a long span, whose backward re-solve of y grows like
  e^(t1 - t0) until the fast sin^2 leaves its exact range (NaN gradients before);
- states beyond the fast sin^2's exact range (garbage sines before).
"""

from __future__ import annotations

import pytest
import torch
from nmode_backends import require_available

import odekern
from odekern.solvers import NonFiniteError
from odekern.testing import randn


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


@pytest.mark.parametrize("dtype, magnitude", [(torch.float32, 1e6), (torch.float64, 1e9)])
def test_states_beyond_the_fast_sine_range_raise(dtype, magnitude):
    require_available("cpu")
    y0 = torch.full((16,), magnitude, dtype=dtype)
    with pytest.raises(RuntimeError, match="sin\\^2 range"):
        odekern.nmode_solve(y0, torch.zeros_like(y0), 0.0, 0.05, method="rk4", step_size=0.01, backend="cpu")
    # The reference (torch's own sin) is exact there and agrees with the closed form of the
    # first step's direction: y decays (-y dominates).
    y1 = odekern.nmode_solve(y0, torch.zeros_like(y0), 0.0, 0.05, method="rk4", step_size=0.01, backend="reference")
    assert bool((y1 < y0).all())


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
