"""torchdiffeq drop-in: ``t`` of another floating dtype than ``y0``, and ``t`` on another device.

torchdiffeq's rules: the solution has ``y0``'s dtype; a fixed grid steps in ``t``'s precision
(its step sizes are ``t``'s), an adaptive method holds time in float64; ``func`` receives time
in ``y0``'s dtype; ``t``'s gradient has ``t``'s dtype. A ``t`` on another device is moved to
``y0``'s with a warning. Each case runs on both libraries and compares values, dtypes and
gradients (fixed grids to rounding, adaptive within ``CROSS_LIBRARY_TOL``).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchdiffeq
from solver_problems import MLPODE
from torch import nn

import odekern
from odekern.solvers.checks import coerce_time
from odekern.solvers.fixed_grid import grid_and_values_from_step_size
from odekern.testing import assert_close, randn

pytestmark = pytest.mark.usefixtures("one_thread")
F32, F64 = torch.float32, torch.float64
PAIRS = [(F32, F64), (F64, F32)]  # (y0 dtype, t dtype)
METHODS = {"dopri5": None, "rk4": {"step_size": 0.1}, "euler": None, "implicit_adams": {"step_size": 0.1}}
TIMES = [0.0, 0.3, 0.9]


class TimeSeen(nn.Module):
    """An MLP RHS that records the dtype of the time it is given."""

    def __init__(self, dtype):
        super().__init__()
        self.mlp = MLPODE(3, dtype=dtype, seed=4)
        self.time_dtypes = set()

    def forward(self, t, y):
        self.time_dtypes.add(t.dtype)
        return self.mlp(t, y)


def _case(lib, y_dtype, t_dtype, method, gradient, tuple_state=False):
    func = TimeSeen(y_dtype)
    y0 = randn(2, 3, dtype=y_dtype, seed=1).requires_grad_(True)
    t = torch.tensor(TIMES, dtype=t_dtype, requires_grad=True)
    state = (y0, 2 * y0) if tuple_state else y0
    rhs = (lambda s, y: (func(s, y[0]), func(s, y[1]))) if tuple_state else func
    solve = lib.odeint_adjoint if gradient == "adjoint" else lib.odeint
    kw = {"adjoint_params": tuple(func.parameters())} if gradient == "adjoint" else {}
    # Tight tolerances: torchdiffeq also differentiates through its first step size, a
    # difference of the order of the truncation error (odekern's step sizes are constants).
    # (Adams: rtol/atol are the corrector's, loose enough to be decided by the dynamics in float32.)
    tols = {"rtol": 1e-9, "atol": 1e-10} if method == "dopri5" else {"rtol": 1e-4, "atol": 1e-6}
    sol = solve(rhs, state, t, method=method, options=METHODS[method], **tols, **kw)
    parts = sol if tuple_state else (sol,)
    loss = sum((p ** 2).sum() for p in parts)
    grads = torch.autograd.grad(loss, (y0, t, *func.parameters()))
    return parts, grads, func.time_dtypes


def _tolerance(method, y_dtype):
    # In float32 a step-size controller's decisions are rounding-noisy in both libraries.
    return {"kind": "cross"} if method == "dopri5" or y_dtype == F32 else {"kind": "rounding"}


@pytest.mark.filterwarnings("ignore:.*did not converge")
@pytest.mark.parametrize("y_dtype,t_dtype", PAIRS, ids=["y32-t64", "y64-t32"])
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("gradient", ["backprop", "adjoint"])
def test_mixed_time_dtype_matches_torchdiffeq(y_dtype, t_dtype, method, gradient):
    ours, our_grads, our_times = _case(odekern, y_dtype, t_dtype, method, gradient)
    theirs, their_grads, their_times = _case(torchdiffeq, y_dtype, t_dtype, method, gradient)
    assert ours[0].dtype == theirs[0].dtype == y_dtype
    assert our_times == their_times == {y_dtype}  # func gets time in the state's dtype
    tol = _tolerance(method, y_dtype)
    assert_close(ours[0], theirs[0], **tol)
    for name, a, b in zip(["y0", "t", "params"], our_grads, their_grads):
        assert a.dtype == b.dtype, name
        if name == "t" and gradient == "backprop" and _inner_time_on_grid(t_dtype, method):
            # An inner output time on the step_size grid (0.3 in float32) moves its grid point in
            # odekern, not in torchdiffeq, which changes d/dt there and d/dt[0]
            # (tests/solvers/test_fixed_grid_times.py checks them against the exact solution).
            continue
        # Gradients carry the state's precision whatever their dtype (d/dt of a float32 solve).
        assert_close(a.to(y_dtype), b.to(y_dtype), msg=f"d/d{name}", **tol)


def _inner_time_on_grid(t_dtype: torch.dtype, method: str) -> bool:
    """Whether an inner output time of ``_case`` is a point of the method's step_size grid, for
    a one-step method (multistep Adams grids stay torchdiffeq's)."""
    step = (METHODS[method] or {}).get("step_size")
    if step is None or "adams" in method:
        return False
    times = torch.tensor(TIMES, dtype=t_dtype)
    grid = grid_and_values_from_step_size(times, step)[1]
    return any(v in grid for v in times[1:-1].tolist())


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_mixed_time_dtype_tuple_state_matches_torchdiffeq(method):
    ours, our_grads, _ = _case(odekern, F32, F64, method, "backprop", tuple_state=True)
    theirs, their_grads, _ = _case(torchdiffeq, F32, F64, method, "backprop", tuple_state=True)
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype == F32
        assert_close(a, b, kind="cross")
    for a, b in zip(our_grads, their_grads):
        assert a.dtype == b.dtype
        assert_close(a.to(F32), b.to(F32), kind="cross")


@pytest.mark.parametrize("gradient", ["backprop", "adjoint"])
def test_tuple_state_of_mixed_dtypes_is_promoted_like_torchdiffeq(gradient):
    # torchdiffeq concatenates the components, so it solves and returns them in the promoted dtype.
    x0 = randn(3, dtype=F32, seed=2).requires_grad_(True)
    v0 = randn(3, dtype=F64, seed=3).requires_grad_(True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    results = []
    for lib in (odekern, torchdiffeq):
        solve = lib.odeint_adjoint if gradient == "adjoint" else lib.odeint
        kw = {"adjoint_params": ()} if gradient == "adjoint" else {}
        x, v = solve(lambda s, y: (y[1], -torch.sin(y[0])), (x0, v0), t, method="rk4",
                     options={"step_size": 0.05}, **kw)
        results.append((x, v, *torch.autograd.grad((x ** 2).sum() + v.sum(), (x0, v0))))
    for a, b in zip(*results):
        assert a.dtype == b.dtype
        assert_close(a, b, kind="cross")


class ConstantRHS(nn.Module):
    """A small model whose time grid is a plain tensor attribute (not a buffer): ``.double()``
    leaves it float32, as in the official CNM-UNet code."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.t = torch.tensor([0.0, 0.5, 1.0])

    def forward(self, t, y):
        return torch.tanh(self.lin(y))

    def solve(self, lib, y):
        return lib.odeint(self, y, self.t, method="rk4", options={"step_size": 0.1})[-1]


def test_model_double_with_a_float32_time_attribute_matches_torchdiffeq():
    model = ConstantRHS().double()
    y = randn(2, 3, dtype=F64, seed=6)
    ours, theirs = model.solve(odekern, y), model.solve(torchdiffeq, y)
    assert ours.dtype == theirs.dtype == F64
    assert_close(ours, theirs)


@pytest.mark.parametrize("gradient", ["backprop", "adjoint"])
def test_ode_block_takes_a_time_tensor_of_another_dtype(gradient):
    func = MLPODE(3, dtype=F32, seed=4)
    block = odekern.ODEBlock(func, t=torch.tensor([0.0, 0.7], dtype=F64), method="dopri5", gradient=gradient,
                             rtol=1e-6, atol=1e-8)
    x = randn(2, 3, dtype=F32, seed=1)
    out = block(x)
    ref = torchdiffeq.odeint(func, x, torch.tensor([0.0, 0.7], dtype=F64), rtol=1e-6, atol=1e-8)[-1]
    assert out.dtype == F32
    assert_close(out, ref, kind="cross")
    block.double()
    assert block(x.double()).dtype == F64


def test_time_on_another_device_is_moved_with_torchdiffeqs_warning():
    # No second real device here: the meta device stands in for y0's device.
    y0 = torch.empty(3, device="meta")
    with pytest.warns(UserWarning, match=r"^t is not on the same device as y0\. Coercing to y0\.device\.$"):
        moved = coerce_time(torch.tensor([0.0, 1.0]), y0)
    assert moved.device.type == "meta"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = torch.tensor([0.0, 1.0])
        assert coerce_time(same, torch.ones(3)) is same


def test_time_must_still_be_floating():
    # torchdiffeq refuses an integer t too (TypeError).
    with pytest.raises(TypeError, match=r"^t must be a floating point tensor"):
        odekern.odeint(lambda s, y: -y, torch.ones(2), torch.tensor([0, 1]))
