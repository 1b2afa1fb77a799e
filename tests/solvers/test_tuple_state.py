"""Tuple states solved natively (odekern/solvers/state.py): no concatenation, same results.

References: the same ODE written on the concatenated (flat) state and solved by odekern
(equal within rounding: same arithmetic per element), torchdiffeq with the tuple state (it
flattens internally; equal within CROSS_LIBRARY_TOL for dopri5, rounding for fixed grids, same
RHS-evaluation counts), norms computed on the concatenation by hand, and gradcheck in float64.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torchdiffeq
from solver_problems import Counting

import odekern
from odekern import odeint, odeint_adjoint
from odekern.adjoint import _AdjointNorm, _AugmentedLayout, _TupleParts
from odekern.dispatch import registered, replaced
from odekern.solvers import stages
from odekern.solvers.base import RHS
from odekern.solvers.norms import mixed_norm, rms_norm
from odekern.solvers.registry import METHODS
from odekern.testing import assert_close, randn

F64 = torch.float64
DOPRI5_NFE_PER_STEP = 6
pytestmark = [pytest.mark.filterwarnings("ignore:.*did not converge"),
              pytest.mark.filterwarnings("ignore:Functional iteration did not converge")]

SHAPES = [(2, 3), (2, 3), (4,)]  # position, velocity and an extra component of another shape


def tuple_rhs(t, y):
    """A damped nonlinear oscillator (x, v) coupled to a decaying s; returns v itself as dx/dt."""
    x, v, s = y
    return v, -torch.sin(x) - 0.2 * v * torch.cos(t) + 0.1 * s.mean(), -0.5 * s + 0.1 * torch.tanh(x).sum()


def flatten(parts):
    return torch.cat([p.reshape(-1) for p in parts])


def unflatten(flat):
    out, start = [], 0
    for shape in SHAPES:
        n = torch.Size(shape).numel()
        out.append(flat[..., start:start + n].reshape(*flat.shape[:-1], *shape))
        start += n
    return tuple(out)


def flat_rhs(t, y):
    """The same ODE on the concatenated state (written independently of odekern's tuples.py)."""
    return flatten(tuple_rhs(t, unflatten(y)))


def _y0(requires_grad=False):
    return tuple(randn(*s, dtype=F64, seed=i + 1, requires_grad=requires_grad) for i, s in enumerate(SHAPES))


FIXED = {
    "euler": {"step_size": 0.05},
    "rk4": {"step_size": 0.1},
    "explicit_adams": {"step_size": 0.05, "max_order": 5},
    "implicit_adams": {"step_size": 0.1},
}
T = torch.tensor([0.0, 0.45, 1.0, 1.5], dtype=F64)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("method", sorted(FIXED))
def test_fixed_grid_tuple_equals_flat_and_torchdiffeq(method, reverse):
    t = T.flip(0) if reverse else T
    y0 = _y0()
    ours, flat, theirs = Counting(tuple_rhs), Counting(flat_rhs), Counting(tuple_rhs)
    with torch.no_grad():
        got = odeint(ours, y0, t, method=method, options=dict(FIXED[method]))
        got_flat = unflatten(odeint(flat, flatten(y0), t, method=method, options=dict(FIXED[method])))
        ref = torchdiffeq.odeint(theirs, y0, t, method=method, options=dict(FIXED[method]))
    assert isinstance(got, tuple) and len(got) == 3
    for i, (a, b, c) in enumerate(zip(got, got_flat, ref)):
        assert a.shape == (len(t), *SHAPES[i])
        assert_close(a, b, msg=f"component {i}: tuple vs flat ({method})")
        assert_close(a, c, msg=f"component {i}: tuple vs torchdiffeq ({method})")
    assert ours.n == flat.n == theirs.n


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_dopri5_tuple_matches_torchdiffeq_steps(reverse):
    """Default tuple norm (max over components of their RMS, torchdiffeq's): same steps."""
    t = T.flip(0) if reverse else T
    y0 = _y0()
    ours, theirs = Counting(tuple_rhs), Counting(tuple_rhs)
    got, status = odeint(ours, y0, t, options={"on_max_steps": "return"})
    ref = torchdiffeq.odeint(theirs, y0, t, method="dopri5")
    for i, (a, b) in enumerate(zip(got, ref)):
        assert_close(a, b, kind="cross", msg=f"component {i}")
    assert abs(ours.n - theirs.n) <= DOPRI5_NFE_PER_STEP, f"odekern {ours.n} vs torchdiffeq {theirs.n} evaluations"
    assert status.n_steps > 5  # a genuinely adaptive solve


def test_dopri5_rms_norm_tuple_equals_flat():
    """norm='rms' over a tuple is the RMS over the concatenation: the flat solve takes the same steps."""
    y0 = _y0()
    ours, flat = Counting(tuple_rhs), Counting(flat_rhs)
    with torch.no_grad():
        got = odeint(ours, y0, T, options={"norm": "rms"})
        got_flat = unflatten(odeint(flat, flatten(y0), T))
    for i, (a, b) in enumerate(zip(got, got_flat)):
        assert_close(a, b, msg=f"component {i}")
    assert ours.n == flat.n


def test_per_component_tolerances_match_torchdiffeq():
    y0 = _y0()
    tols = {"rtol": (1e-6, 1e-8, 1e-5), "atol": (1e-8, 1e-10, torch.tensor(1e-7, dtype=F64))}
    ours, theirs = Counting(tuple_rhs), Counting(tuple_rhs)
    got = odeint(ours, y0, T, **tols)
    ref = torchdiffeq.odeint(theirs, y0, T, method="dopri5", **tols)
    for i, (a, b) in enumerate(zip(got, ref)):
        assert_close(a, b, kind="cross", msg=f"component {i}")
    assert abs(ours.n - theirs.n) <= DOPRI5_NFE_PER_STEP


def test_per_component_tolerance_needs_tuple_state_and_length():
    with pytest.raises(ValueError, match=r"rtol given per component \(a tuple\) needs a tuple state y0"):
        odeint(lambda t, y: -y, torch.ones(2, dtype=F64), T, rtol=(1e-6, 1e-6))
    with pytest.raises(ValueError, match=r"one entry per component of y0 \(3\), got 2"):
        odeint(tuple_rhs, _y0(), T, atol=(1e-6, 1e-6))


def test_per_sample_control_with_tuple_state():
    """Each batch element of every component is solved alone, its error the RMS over all of its
    components: equal to solving each sample by itself with norm='rms'."""

    def oscillator(t, y):
        x, v = y
        return v, -torch.sin(3 * x) * (1 + x.square().sum(dim=1, keepdim=True))

    y0 = (randn(3, 2, dtype=F64, seed=1, scale=2.0), randn(3, 2, dtype=F64, seed=2))
    got, status = odeint(oscillator, y0, T, options={"control": "per_sample", "on_max_steps": "return"})
    assert len(status.per_sample) == 3
    for b in range(3):
        alone = odeint(oscillator, tuple(c[b:b + 1] for c in y0), T, options={"norm": "rms"})
        for i in range(2):
            assert_close(got[i][:, b:b + 1], alone[i], msg=f"sample {b} component {i}")
    assert len({s.n_steps for s in status.per_sample}) > 1  # the samples did take their own steps
    with pytest.raises(ValueError, match=r"the same for every component of a tuple state"):
        odeint(tuple_rhs, _y0(), T, options={"control": "per_sample"})


# --------------------------------------------------------------------------- norms


def test_norms_of_tuple_equal_norms_of_concatenation():
    parts = _y0()
    flat = flatten(parts)
    assert_close(rms_norm(parts), flat.pow(2).mean().sqrt())
    assert_close(mixed_norm(parts), torch.stack([p.pow(2).mean().sqrt() for p in parts]).max())


@pytest.mark.parametrize("norm_name", ["rms", "mixed", "adjoint"])
def test_fused_error_ratio_of_tuple_equals_reference(backend, norm_name):
    """One fused RMS per component, combined by the norm == the norm of the materialised error."""
    passes = []
    stack = contextlib.ExitStack()
    for name, entry in registered("rk_error_ratio").items():
        stack.enter_context(replaced("rk_error_ratio", name,
                                     lambda *args, _fn=entry.fn: passes.append(1) or _fn(*args)))

    # The adjoint's tuple state (a_t, y, a_y, a_theta) with y a 1-component tuple; a_theta 0-dim.
    shapes = [(), (2, 3), (2, 3), (4,), ()] if norm_name == "adjoint" else SHAPES
    y0 = tuple(_rand(s, 10 + i) for i, s in enumerate(shapes))
    norm = {"rms": rms_norm, "mixed": mixed_norm,
            "adjoint": _AdjointNorm(_AugmentedLayout(1, True), _TupleParts(y0), rms_norm)}[norm_name]
    y1 = tuple(_rand(s, 20 + i) for i, s in enumerate(shapes))
    ks = [tuple(_rand(s, 30 + 7 * j + i) for i, s in enumerate(shapes)) for j in range(3)]
    coeffs, dt = (0.3, -0.5, 0.2), 0.05
    with stack, odekern.use_backend(backend):
        got = stages.embedded_error_ratio(y0, y1, dt, coeffs, ks, 1e-3, 1e-4, norm)
    # A fused backend runs one error pass per component (the point of the test), the reference none.
    assert len(passes) == (0 if backend == "reference" else len(shapes))
    err = tuple(dt * sum(c * k[i] for c, k in zip(coeffs, ks)) for i in range(len(shapes)))
    scaled = tuple(e / (1e-4 + 1e-3 * torch.maximum(a.abs(), b.abs())) for e, a, b in zip(err, y0, y1))
    if norm_name == "rms":
        want = flatten(scaled).pow(2).mean().sqrt()
    elif norm_name == "mixed":
        want = torch.stack([s.pow(2).mean().sqrt() for s in scaled]).max()
    else:
        want = torch.stack([scaled[0].abs(), scaled[1].pow(2).mean().sqrt(), scaled[2].pow(2).mean().sqrt(),
                            scaled[3].pow(2).mean().sqrt(), scaled[4].abs()]).max()
    assert_close(got, want)


def _rand(shape, seed):
    return randn(*shape, dtype=F64, seed=seed) if shape else randn(1, dtype=F64, seed=seed).reshape(())


# --------------------------------------------------------------------------- no copies


def test_rhs_receives_the_solvers_stage_buffers():
    """Under no_grad the components the RHS sees are the preallocated per-component buffers (or
    y0), and the velocity it returns is passed on as k's component without a copy."""
    y0 = _y0()
    seen = []

    def recording(t, y):
        dy = tuple_rhs(t, y)
        seen.append((tuple(c.data_ptr() for c in y), dy[0] is y[1]))
        return dy

    with torch.no_grad():
        solver = METHODS["rk4"](RHS(recording), y0, 1e-7, 1e-9, method="rk4", step_size=0.25)
        solver.integrate(torch.tensor([0.0, 1.0], dtype=F64))
    buffers = [b for b in (*solver._stepper._stage_buffers, *solver._y_buffers) if b is not None]
    owned = {c.data_ptr() for b in (y0, *buffers) for c in b}
    assert all(len(b) == 3 for b in buffers)  # one buffer per component, never a flat one
    assert len(seen) == 16
    for ptrs, velocity_passed_on in seen:
        assert set(ptrs) <= owned
        assert velocity_passed_on


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_backprop_gradients_tuple_equal_flat(method):
    options = {"step_size": 0.1} if method == "rk4" else None
    y0 = _y0(requires_grad=True)
    got = odeint(tuple_rhs, y0, T, method=method, options=options)
    loss = sum((g[1:] ** 2).sum() * (i + 1) for i, g in enumerate(got))
    grads = torch.autograd.grad(loss, y0)
    # The flat reference uses the tuple's default norm on the concatenation, so it takes the same steps.
    flat_options = {**(options or {}), **({"norm": mixed_flat} if method == "dopri5" else {})}
    ref = unflatten(odeint(flat_rhs, flatten(y0), T, method=method, options=flat_options))
    ref_loss = sum((g[1:] ** 2).sum() * (i + 1) for i, g in enumerate(ref))
    ref_grads = torch.autograd.grad(ref_loss, y0)
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        assert_close(a, b, msg=f"d/dy0[{i}]")


def mixed_flat(flat):
    """torchdiffeq's tuple norm applied to the concatenated state (for the flat reference)."""
    return torch.stack([p.pow(2).mean().sqrt() for p in unflatten(flat)]).max()


@pytest.mark.parametrize("solve", ["backprop", "adjoint"])
def test_gradcheck_tuple_state(solve):
    t = torch.tensor([0.0, 0.5], dtype=F64)
    opts = {"method": "rk4", "options": {"step_size": 0.25}}

    def run(*y):
        if solve == "adjoint":
            return odeint_adjoint(tuple_rhs, y, t, adjoint_params=(), **opts)
        return odeint(tuple_rhs, y, t, **opts)

    # The continuous adjoint is within O(h^4) of the discrete gradient gradcheck measures.
    tol = {"atol": 1e-5, "rtol": 1e-3} if solve == "adjoint" else {}
    assert torch.autograd.gradcheck(run, _y0(requires_grad=True), **tol)


def test_adjoint_tuple_state_matches_torchdiffeq_steps():
    """Gradients and backward RHS-evaluation counts equal torchdiffeq's adjoint (same default
    adjoint norm: max of |a_t|, the tuple norm of y and a_y, and each parameter's RMS)."""
    weight = torch.nn.Parameter(randn(3, 3, dtype=F64, seed=7, scale=0.5))

    class Func(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = weight

        def forward(self, t, y):
            x, v, s = y
            return v, -torch.tanh(x @ self.w) - 0.2 * v, -0.5 * s + 0.1 * x.sum()

    func = _CountCalls(Func())
    t = torch.tensor([0.0, 0.6, 1.2], dtype=F64, requires_grad=True)
    results = []
    for solve in (odeint_adjoint, torchdiffeq.odeint_adjoint):
        y0 = _y0(requires_grad=True)
        ys = solve(func, y0, t)
        loss = sum((y ** 2).sum() for y in ys)
        func.n = 0
        grads = torch.autograd.grad(loss, (*y0, weight, t))
        results.append((grads, func.n))
    (grads, n), (ref_grads, ref_n) = results
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        assert_close(a, b, kind="cross", msg=f"gradient {i}")
    assert abs(n - ref_n) <= DOPRI5_NFE_PER_STEP, f"backward: odekern {n} vs torchdiffeq {ref_n} evaluations"


class _CountCalls(torch.nn.Module):
    def __init__(self, func):
        super().__init__()
        self.func = func
        self.n = 0

    def forward(self, t, y):
        self.n += 1
        return self.func(t, y)
