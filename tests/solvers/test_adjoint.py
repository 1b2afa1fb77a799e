"""Continuous adjoint (odekern.adjoint.odeint_adjoint).

References: torchdiffeq.odeint_adjoint (same algorithm: agreement within CROSS_LIBRARY_TOL),
discrete backprop through odekern.odeint (differs by the solver's truncation error, so the
tolerance is chosen per method from its order and step), the matrix exponential for a linear
RHS, and torch.autograd.gradcheck in float64 (numerical derivatives of the forward itself).
"""

from __future__ import annotations

import weakref

import pytest
import torch
import torchdiffeq
from torch import nn

from odekern import odeint
from odekern.adjoint import odeint_adjoint
from odekern.testing import assert_close, randn

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py


# --------------------------------------------------------------------------- right-hand sides


class LinearRHS(nn.Module):
    """dy/dt = y A^T: exact solution y(t) = y0 expm(t A)^T."""

    def __init__(self, n: int = 3, dtype=F64):
        super().__init__()
        self.A = nn.Parameter(randn(n, n, dtype=dtype, seed=1, scale=0.5))

    def forward(self, t, y):
        return y @ self.A.T


class MLPRHS(nn.Module):
    """Nonlinear and explicitly time dependent, so dL/dt has a df/dt part."""

    def __init__(self, n: int = 3, hidden: int = 5, dtype=F64):
        super().__init__()
        self.l1 = nn.Linear(n, hidden).to(dtype)
        self.l2 = nn.Linear(hidden, n).to(dtype)

    def forward(self, t, y):
        return self.l2(torch.tanh(self.l1(y))) * torch.cos(t)


class ConvRHS(nn.Module):
    def __init__(self, channels: int = 2, dtype=F64):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1).to(dtype)

    def forward(self, t, y):
        return torch.tanh(self.conv(y)) - 0.5 * y


PROBLEMS = {
    "linear": (LinearRHS, (2, 3)),
    "mlp": (MLPRHS, (2, 3)),
    "conv": (ConvRHS, (1, 2, 5, 5)),  # odd spatial size on purpose
}

# (method, options, solver tolerances)
METHODS = {
    "dopri5": ("dopri5", None, {}),  # torchdiffeq's defaults: rtol=1e-7, atol=1e-9
    "rk4": ("rk4", {"step_size": 1 / 32}, {}),
    "euler": ("euler", {"step_size": 1 / 32}, {}),
}


def _make(problem: str, dtype=F64):
    torch.manual_seed(0)
    cls, shape = PROBLEMS[problem]
    func = cls(dtype=dtype)
    y0 = randn(*shape, dtype=dtype, seed=2, requires_grad=True)
    # Output times on the fixed-step grids below: fixed-grid methods then need no interpolation
    # (torchdiffeq's is linear, O(h^2), and would swamp rk4's O(h^4) adjoint-vs-backprop gap).
    t = torch.tensor([0.0, 0.25, 0.75], dtype=dtype, requires_grad=True)
    return func, y0, t


def _grads(solve, func, y0, t, **kw):
    """Gradients of a fixed non-trivial loss of every output w.r.t. (y0, t, *params)."""
    ys = solve(func, y0, t, **kw)
    weights = randn(*ys.shape, dtype=ys.dtype, seed=3)
    loss = (weights * ys).sum() + (ys[-1] ** 2).sum()
    return ys.detach(), torch.autograd.grad(loss, (y0, t, *func.parameters()))


def _names(func):
    return ["y0", "t"] + [n for n, _ in func.named_parameters()]


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("method_id", sorted(METHODS))
def test_matches_torchdiffeq_adjoint(problem, method_id):
    method, options, tols = METHODS[method_id]
    func, y0, t = _make(problem)
    ys, ours = _grads(odeint_adjoint, func, y0, t, method=method, options=options, **tols)
    ys_ref, ref = _grads(
        torchdiffeq.odeint_adjoint, func, y0, t, method=method, options=options, **tols
    )
    assert_close(ys, ys_ref, kind="cross", msg="solution")
    for name, a, b in zip(_names(func), ours, ref):
        assert_close(a, b, kind="cross", msg=f"d loss / d {name}")


class _CountingRHS(nn.Module):
    """Time dependent (so dL/dt has a df/dt part); a tuple state couples its two components.
    Counts its evaluations."""

    def __init__(self, n: int = 3):
        super().__init__()
        self.w = nn.Parameter(randn(n, n, dtype=F64, seed=1, scale=n ** -0.5))
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        if isinstance(y, tuple):
            a, b = y
            return torch.tanh(b @ self.w) * torch.cos(t), -0.5 * a + torch.sin(t)
        return torch.tanh(y @ self.w) * torch.cos(t) - 0.1 * y


@pytest.mark.parametrize("method", ["bosh3", "dopri5", "adaptive_heun"])
@pytest.mark.parametrize("times", [[0.5, 0.35, 0.2], [0.2, 0.35, 0.5], [0.0, 0.3]])
@pytest.mark.parametrize("tuple_state", [False, True])
def test_backward_takes_torchdiffeqs_steps_when_t_needs_no_gradient(method, times, tuple_state):
    # torchdiffeq's backward integrates a_t (dL/dt) whether or not t requires grad, and |a_t|'s
    # error is part of its step control: a backward solve without it takes other steps from
    # the second output interval on (where a_t starts non-zero), and its gradients differ by
    # the tolerance. At a loose tolerance, where steps are few, both must take the same steps.
    results = {}
    for name, solve in (("odekern", odeint_adjoint), ("torchdiffeq", torchdiffeq.odeint_adjoint)):
        func = _CountingRHS()
        y0 = randn(2, 3, dtype=F64, seed=2)
        leaves = (y0.clone().requires_grad_(), (0.7 * y0 + 0.1).requires_grad_()) if tuple_state \
            else (y0.clone().requires_grad_(),)
        ys = solve(func, leaves if tuple_state else leaves[0], torch.tensor(times, dtype=F64), method=method,
                   rtol=1e-3, atol=1e-3)
        forward_calls, func.calls = func.calls, 0
        loss = sum((y ** 2).sum() for y in (ys if tuple_state else (ys,)))
        grads = torch.autograd.grad(loss, (*leaves, *func.parameters()))
        results[name] = (forward_calls, func.calls, grads)
    (ours_fwd, ours_bwd, ours), (theirs_fwd, theirs_bwd, theirs) = results["odekern"], results["torchdiffeq"]
    assert (ours_fwd, ours_bwd) == (theirs_fwd, theirs_bwd), "RHS calls (forward, backward)"
    for a, b in zip(ours, theirs):
        assert_close(a, b, rtol=1e-10, atol=1e-12)


# Continuous adjoint vs discrete backprop differ by the truncation error: dopri5 at rtol 1e-10
# and rk4 (O(h^4), h=1/32) agree to CROSS_LIBRARY_TOL; euler's gap is C*h with C ~ 3 on these
# problems (gradients of size ~3), so h=1/512 is compared at 2e-2 (and the O(h) rate is
# checked separately by test_euler_gap_is_first_order).
BACKPROP_CASES = {
    "dopri5": ("dopri5", None, {"rtol": 1e-10, "atol": 1e-12}, {}),
    "rk4": ("rk4", {"step_size": 1 / 32}, {}, {}),
    "euler": ("euler", {"step_size": 1 / 512}, {}, {"rtol": 2e-2, "atol": 2e-2}),
}


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("case", sorted(BACKPROP_CASES))
def test_adjoint_matches_backprop(problem, case):
    method, options, tols, compare = BACKPROP_CASES[case]
    func, y0, t = _make(problem)
    ys, adj = _grads(odeint_adjoint, func, y0, t, method=method, options=options, **tols)
    ys_bp, bp = _grads(odeint, func, y0, t, method=method, options=options, **tols)
    # Same forward solver: the solutions agree to rounding.
    assert_close(ys, ys_bp, kind="rounding", msg="solution")
    names = _names(func)
    for name, a, b in zip(names, adj, bp):
        if name == "t" and options is not None:
            # On a step_size grid, backprop's dL/dt of inner outputs goes through the
            # interpolation between grid points, not through f: compared by gradcheck below.
            continue
        assert_close(a, b, kind="cross", msg=f"d loss / d {name}", **compare)


def test_euler_gap_is_first_order():
    """Adjoint-vs-backprop gap shrinks 4x when euler's step shrinks 4x (both are consistent)."""

    def gap(h):
        func, y0, t = _make("linear")
        _, adj = _grads(odeint_adjoint, func, y0, t, method="euler", options={"step_size": h})
        _, bp = _grads(odeint, func, y0, t, method="euler", options={"step_size": h})
        return max(
            (a - b).abs().max().item() for name, a, b in zip(_names(func), adj, bp) if name != "t"
        )

    coarse, fine = gap(1 / 64), gap(1 / 256)
    assert 3.0 < coarse / fine < 5.0, f"gap {coarse:.3e} -> {fine:.3e} is not first order in h"


def test_linear_problem_matches_matrix_exponential():
    """d/dy0 and d/dA of sum(y(T)) against the closed form via expm (no solver involved)."""
    func, y0, _ = _make("linear")
    T = 0.7
    t = torch.tensor([0.0, T], dtype=F64)
    (gy0, gA) = torch.autograd.grad(
        odeint_adjoint(func, y0, t, method="dopri5", rtol=1e-11, atol=1e-13)[-1].sum(), (y0, func.A)
    )

    def exact(y0_, A_):
        return (y0_ @ torch.linalg.matrix_exp(T * A_).T).sum()

    ey0, eA = torch.autograd.grad(exact(y0, func.A), (y0, func.A))
    assert_close(gy0, ey0, kind="cross")
    assert_close(gA, eA, kind="cross")


def test_float32_matches_torchdiffeq():
    func, y0, t = _make("mlp", dtype=torch.float32)
    ys, ours = _grads(odeint_adjoint, func, y0, t, method="rk4", options={"step_size": 0.1})
    ys_ref, ref = _grads(
        torchdiffeq.odeint_adjoint, func, y0, t, method="rk4", options={"step_size": 0.1}
    )
    assert ys.dtype == torch.float32 and all(g.dtype == torch.float32 for g in ours)
    assert_close(ys, ys_ref, kind="cross")
    for name, a, b in zip(_names(func), ours, ref):
        assert_close(a, b, kind="cross", msg=name)


def test_reverse_time():
    func, y0, _ = _make("mlp")
    t = torch.tensor([1.0, 0.6, 0.0], dtype=F64, requires_grad=True)
    tols = {"method": "dopri5", "rtol": 1e-10, "atol": 1e-12}
    _, ours = _grads(odeint_adjoint, func, y0, t, **tols)
    _, ref = _grads(torchdiffeq.odeint_adjoint, func, y0, t, **tols)
    for name, a, b in zip(_names(func), ours, ref):
        assert_close(a, b, kind="cross", msg=name)


def test_tuple_state_matches_single_tensor():
    """A tuple y0 (y, z) gives the same gradients as the equivalent concatenated state."""
    func, y0, t = _make("linear")

    def tuple_func(t_, state):
        full = func(t_, torch.cat(state, dim=-1))
        return full[..., :1], full[..., 1:]

    tols = {"method": "rk4", "options": {"step_size": 0.05}}
    a, b = y0[..., :1], y0[..., 1:]
    ya, yb = odeint_adjoint(tuple_func, (a, b), t, adjoint_params=tuple(func.parameters()), **tols)
    assert ya.shape == (3, 2, 1) and yb.shape == (3, 2, 2)
    loss = (ya**2).sum() + yb.sum()
    grads = torch.autograd.grad(loss, (y0, t, func.A))
    ys = odeint_adjoint(func, y0, t, **tols)
    ref = torch.autograd.grad((ys[..., :1] ** 2).sum() + ys[..., 1:].sum(), (y0, t, func.A))
    for name, g, r in zip(("y0", "t", "A"), grads, ref):
        assert_close(g, r, kind="rounding", msg=name)


# --------------------------------------------------------------------------- the backward state


def _rms(x):
    return x.abs().pow(2).mean().sqrt()


def _part(shape, dtype, seed, scale):
    """A random part of the backward state (complex ones with an imaginary part)."""
    x = randn(1, *shape, dtype=F64, seed=seed, scale=scale)[0]  # randn() takes no empty shape
    if dtype.is_complex:
        x = torch.complex(x, randn(1, *shape, dtype=F64, seed=seed + 100, scale=scale)[0])
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.complex128], ids=str)
@pytest.mark.parametrize("seminorm", [False, True], ids=["norm", "seminorm"])
@pytest.mark.parametrize("y_kind,state_norm", [("tensor", "default"), ("tuple", "default"), ("tensor", "max"),
                                               ("tuple", "user")])
@pytest.mark.parametrize("solved", ["flat", "tuple"])
def test_adjoint_norm_is_the_max_of_its_parts_norms(dtype, seminorm, y_kind, state_norm, solved):
    """The backward solves (a_t, *y, *a_y, *a_theta) as one flat tensor (a tensor y) or as a
    tuple state (a tuple y); its error norm is torchdiffeq's default adjoint norm: max(|a_t|,
    norm(y), norm(a_y), rms of each a_theta), the parameters left out for the seminorm. The
    built-in state norms take the one-call route (a float64 norm per part), the others are
    called on the parts; both against the definition, for both ways of solving."""
    from odekern.adjoint import _AdjointNorm, _AugmentedLayout, _FlatParts, _TupleParts
    from odekern.solvers.norms import max_norm, resolve_norm

    y_shapes = [(2, 3)] if y_kind == "tensor" else [(2, 3), (4,)]
    shapes = [()] + y_shapes + y_shapes + [(5, 2), (0,), (3,)]  # an empty parameter is skipped
    # Each part on its own scale, so a wrong pairing of parts and norms changes the answer.
    parts = [_part(s, dtype, seed=40 + i, scale=2.0 ** (i - 4)) for i, s in enumerate(shapes)]
    n = len(y_shapes)
    user = lambda y: sum(c.abs().sum() for c in y) / 7  # noqa: E731 - a user's norm of a tuple y
    norm_of_y = {"default": resolve_norm(None, y_kind == "tuple"), "max": max_norm, "user": user}[state_norm]
    layout = _AugmentedLayout(n, y_kind == "tuple")
    packing = (_FlatParts if solved == "flat" else _TupleParts)(parts)
    got = _AdjointNorm(layout, packing, norm_of_y, seminorm=seminorm)(packing.to_state(parts))

    def of_y(ys):
        if state_norm == "default":  # RMS of a tensor, max of the RMS of each component of a tuple
            return max(_rms(c) for c in ys)
        if state_norm == "max":
            return max(c.abs().max() for c in ys)
        return user(ys)

    want = [parts[0].abs(), of_y(parts[1:1 + n]), of_y(parts[1 + n:1 + 2 * n])]
    if not seminorm:
        want += [_rms(p) for p in parts[1 + 2 * n:] if p.numel()]
    want = torch.stack([w.to(F64) for w in want]).max()
    assert got.ndim == 0
    assert_close(got.to(F64), want, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)


class _SplitState(nn.Module):
    """``func`` of a (2, 3) state solved as the tuple of its columns (:1, 1:)."""

    def __init__(self, func):
        super().__init__()
        self.func = func

    def forward(self, t, state):
        return tuple(self.func(t, torch.cat(state, -1)).split([1, 2], -1))


@pytest.mark.parametrize("tuple_state", [False, True], ids=["tensor", "tuple"])
def test_custom_adjoint_norm_and_callbacks_receive_the_parts_as_in_torchdiffeq(tuple_state):
    """A user's adjoint norm and callback_step_adjoint see the backward state as torchdiffeq
    hands it over, not the flat tensor that is solved: the norm a tuple (a_t, *y, *a_y,
    *a_theta), the callback (a_t, y, a_y, *a_theta) with a tuple y's components flattened and
    concatenated (torchdiffeq's own form of a tuple state). The gradients agree."""
    results = {}
    for lib, solve in (("odekern", odeint_adjoint), ("torchdiffeq", torchdiffeq.odeint_adjoint)):
        func, y0, t = _make("mlp")
        seen = {"norm": set(), "callback": set()}

        def norm(aug, seen=seen):
            seen["norm"].add(tuple(tuple(c.shape) for c in aug))
            return max(c.abs().max() for c in aug)

        state = (y0[:, :1], y0[:, 1:]) if tuple_state else y0
        solved = _SplitState(func) if tuple_state else func
        solved.callback_step_adjoint = lambda t0, aug, dt, seen=seen: seen["callback"].add(
            tuple(tuple(c.shape) for c in aug))
        ys = solve(solved, state, t, adjoint_params=tuple(func.parameters()), adjoint_options={"norm": norm})
        loss = sum((c ** 2).sum() for c in ys) if tuple_state else (ys ** 2).sum()
        results[lib] = (seen, torch.autograd.grad(loss, (y0, *func.parameters())))
    (ours, our_grads), (theirs, their_grads) = results["odekern"], results["torchdiffeq"]
    assert ours == theirs
    # a_t, y and a_y (the norm: split like the state), the 4 parameters.
    assert [len(shapes) for shapes in ours["norm"]] == [(5 if tuple_state else 3) + 4]
    assert [len(shapes) for shapes in ours["callback"]] == [3 + 4]
    for a, b in zip(our_grads, their_grads):
        assert_close(a, b, kind="cross")


class _ElementwiseRHS(nn.Module):
    """Time dependent, with a per-element parameter: cheap on a state large enough for the
    backward to solve it as a tuple. Counts its evaluations."""

    def __init__(self, n: int):
        super().__init__()
        self.w = nn.Parameter(randn(n, dtype=F64, seed=11, scale=0.5))
        self.b = nn.Parameter(randn(n, dtype=F64, seed=12, scale=0.1))
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return torch.tanh(y * self.w + self.b) * torch.cos(t) - 0.2 * y


@pytest.mark.parametrize("method,options", [("rk4", {"step_size": 0.1}), ("dopri5", None), ("bosh3", None)])
@pytest.mark.parametrize("times", [[0.0, 0.3, 0.5], [0.5, 0.2]])
@pytest.mark.parametrize("adjoint_norm", [None, "seminorm", "user"])
def test_large_tensor_state_is_solved_backward_as_a_tuple_with_torchdiffeqs_steps(method, options, times,
                                                                                   adjoint_norm):
    """A tensor y of TUPLE_PACKING_MIN_NUMEL elements or more is solved backward as the tuple
    (a_t, y, a_y, *a_theta), not laid end to end, and on decreasing times through the
    dynamics' reversed derivative: the same backward RHS calls, norm arguments, callback
    arguments and gradients as torchdiffeq's flat solve of the negated dynamics."""
    from odekern.adjoint import TUPLE_PACKING_MIN_NUMEL, _AugmentedLayout, _packing, _TupleParts

    n = TUPLE_PACKING_MIN_NUMEL
    assert isinstance(_packing(_AugmentedLayout(1, False), [torch.zeros(())] + [torch.zeros(4, n // 4)] * 2),
                      _TupleParts)
    results = {}
    for lib, solve in (("odekern", odeint_adjoint), ("torchdiffeq", torchdiffeq.odeint_adjoint)):
        func = _ElementwiseRHS(n // 4)
        y0 = randn(4, n // 4, dtype=F64, seed=13, requires_grad=True)
        seen = {"norm": [], "callback": []}
        adjoint_options = {}
        if adjoint_norm == "seminorm":
            adjoint_options["norm"] = "seminorm"
        elif adjoint_norm == "user":
            def norm(aug, seen=seen):
                seen["norm"].append(tuple(tuple(c.shape) for c in aug))
                return max(c.abs().max() for c in aug)
            adjoint_options["norm"] = norm
        func.callback_step_adjoint = lambda t0, aug, dt, seen=seen: seen["callback"].append(
            (float(t0), tuple(tuple(c.shape) for c in aug)))
        ys = solve(func, y0, torch.tensor(times, dtype=F64), method=method, options=options, rtol=1e-4,
                   atol=1e-6, adjoint_options=adjoint_options)
        func.calls = 0
        loss = (ys * randn(*ys.shape, dtype=F64, seed=14)).sum()
        grads = torch.autograd.grad(loss, (y0, *func.parameters()))
        results[lib] = (func.calls, seen, grads)
    (ours_calls, ours_seen, ours), (theirs_calls, theirs_seen, theirs) = results["odekern"], results["torchdiffeq"]
    assert ours_calls == theirs_calls, "backward RHS calls"
    assert ours_seen["norm"] == theirs_seen["norm"]
    assert [s for _, s in ours_seen["callback"]] == [s for _, s in theirs_seen["callback"]]
    # The user's time, where torchdiffeq hands the negated one when t decreases (a documented
    # deliberate difference). The initial step sizes differ in the last bit, which the error
    # estimates' cancellation amplifies to ~1e-9 in later steps.
    sign = 1.0 if times[0] < times[-1] else -1.0
    assert_close(torch.tensor([t for t, _ in ours_seen["callback"]], dtype=F64),
                 sign * torch.tensor([t for t, _ in theirs_seen["callback"]], dtype=F64), rtol=1e-8, atol=1e-12)
    for a, b in zip(ours, theirs):
        assert_close(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("dtype", [F64, torch.complex128], ids=str)
@pytest.mark.parametrize("solved", ["flat", "tuple"])
def test_reversed_derivative_is_the_negated_derivative_exactly(dtype, solved):
    """The augmented dynamics' reversed derivative (a_y as the cotangent, f negated) equals
    their derivative negated, bit for bit; a solve on decreasing times calls it and negates
    nothing, a solve on increasing times calls the dynamics themselves."""
    from odekern.adjoint import _AugmentedDynamics, _AugmentedLayout, _FlatParts, _TupleParts
    from odekern.solvers.base import RHS

    w, b = _part((3, 3), dtype, 20, 0.5).requires_grad_(), _part((3,), dtype, 21, 0.5).requires_grad_()
    func = lambda t, y: torch.tanh(y @ w + b) * torch.cos(t)  # noqa: E731 - a user's func
    params = (w, b)
    layout = _AugmentedLayout(1, False)
    parts = [_part((), dtype, 1, 1.0), _part((2, 3), dtype, 2, 1.0), _part((2, 3), dtype, 3, 1.0),
             *(_part(p.shape, dtype, 4 + i, 1.0) for i, p in enumerate(params))]
    packing = (_FlatParts if solved == "flat" else _TupleParts)(parts)
    dynamics = _AugmentedDynamics(func, layout, packing, params)
    aug = packing.to_state(parts)
    t = torch.tensor(0.3, dtype=F64)
    forward, reversed_ = dynamics(t, aug), dynamics.reversed_derivative(t, aug)
    for a, b in zip(packing.split(forward), packing.split(reversed_)):
        assert torch.equal(-a, b)
    calls = []
    dynamics.reversed_derivative = lambda t, y: calls.append("reversed") or reversed_
    dynamics.func = lambda t, y: calls.append("forward") or func(t, y)
    through_reversed = RHS(dynamics, time_sign=-1.0)(-t, aug)
    assert calls == ["reversed"]
    assert all(torch.equal(a, b) for a, b in zip(packing.split(through_reversed), packing.split(reversed_)))
    RHS(dynamics, time_sign=1.0)(t, aug)
    assert calls == ["reversed", "forward"]


def test_adjoint_params_for_plain_function():
    """A non-Module func: gradients reach exactly the tensors named in adjoint_params."""
    A = randn(3, 3, dtype=F64, seed=4, scale=0.5, requires_grad=True)
    y0 = randn(3, dtype=F64, seed=5, requires_grad=True)
    t = torch.tensor([0.0, 0.5], dtype=F64)
    tols = {"method": "rk4", "options": {"step_size": 0.05}}

    def f(t_, y):
        return torch.tanh(A @ y)

    g = torch.autograd.grad(
        odeint_adjoint(f, y0, t, adjoint_params=(A,), **tols)[-1].sum(), (y0, A)
    )
    r = torch.autograd.grad(
        torchdiffeq.odeint_adjoint(f, y0, t, adjoint_params=(A,), **tols)[-1].sum(), (y0, A)
    )
    for a, b in zip(g, r):
        assert_close(a, b, kind="cross")


def test_a_tensor_listed_twice_in_adjoint_params_gets_its_gradient_once():
    # (*model.parameters(), *func.parameters()) with func inside model lists func's twice;
    # torchdiffeq adds such a gradient once per listing (a deliberate difference, docs).
    class Field(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3).to(F64)

        def forward(self, t_, y):
            return torch.tanh(self.lin(y))

    func = Field()
    y0 = randn(2, 3, dtype=F64, seed=6)
    t = torch.tensor([0.0, 0.5], dtype=F64)
    tols = {"method": "rk4", "options": {"step_size": 0.05}}
    params = tuple(func.parameters())
    once = torch.autograd.grad(
        torchdiffeq.odeint_adjoint(func, y0, t, adjoint_params=params, **tols)[-1].sum(), params)
    twice = torch.autograd.grad(
        odeint_adjoint(func, y0, t, adjoint_params=params + params[::-1], **tols)[-1].sum(), params)
    for a, b in zip(twice, once):
        assert_close(a, b, kind="cross")


def test_per_sample_control_and_other_adjoint_method():
    """Forward with options control='per_sample'; backward with a different method (dopri5)."""
    func, y0, t = _make("mlp")
    tols = {"method": "dopri5", "rtol": 1e-10, "atol": 1e-12, "options": {"control": "per_sample"}}
    _, adj = _grads(odeint_adjoint, func, y0, t, **tols)
    _, bp = _grads(odeint, func, y0, t, **tols)
    for name, a, b in zip(_names(func), adj, bp):
        assert_close(a, b, kind="cross", msg=name)
    _, mixed = _grads(
        odeint_adjoint, func, y0, t, method="rk4", options={"step_size": 1 / 64},
        adjoint_method="dopri5", adjoint_options={}, adjoint_rtol=1e-10, adjoint_atol=1e-12,
    )  # fmt: skip
    for name, a, b in zip(_names(func), mixed, bp):
        if name != "t":  # backprop's dL/dt on a step_size grid: see test_adjoint_matches_backprop
            assert_close(a, b, kind="cross", msg=name)


def test_constant_field_gives_zero_vjps():
    """f independent of y, t and parameters: dL/dy0 = dL/dy(T), no autograd.grad error."""

    class Drift(nn.Module):
        def forward(self, t, y):
            return torch.ones_like(y)

    y0 = randn(4, dtype=F64, seed=7, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    (g,) = torch.autograd.grad(odeint_adjoint(Drift(), y0, t, method="rk4")[-1].sum(), (y0,))
    assert_close(g, torch.ones_like(y0))


def test_backward_solve_keeps_the_forced_backend():
    """backward() runs after the use_backend block exits; the backward solve must still use it."""
    from odekern.dispatch import requested_backend, use_backend

    seen = []

    class Recorder(LinearRHS):
        def forward(self, t, y):
            if torch.is_grad_enabled():  # only the backward's augmented dynamics records a graph
                seen.append(requested_backend())
            return super().forward(t, y)

    func = Recorder()
    y0 = randn(2, 3, dtype=F64, seed=8, requires_grad=True)
    with use_backend("reference"):
        ys = odeint_adjoint(func, y0, torch.tensor([0.0, 0.5], dtype=F64), method="rk4")
    ys.sum().backward()
    assert seen and set(seen) == {"reference"}, seen


# --------------------------------------------------------------------------- gradcheck (float64)


# rk4 steps on the grid t itself (h = 0.05): the discrete derivative w.r.t. each t_k then
# differs from the continuous one by O(h^4) ~ 1e-6, inside gradcheck's tolerance.
@pytest.mark.parametrize(
    "method, t, tols",
    [
        ("dopri5", [0.0, 0.35, 0.7], {"rtol": 1e-12, "atol": 1e-12}),
        ("rk4", torch.linspace(0.0, 0.7, 15).tolist(), {}),
    ],
    ids=["dopri5", "rk4"],
)
@pytest.mark.parametrize("packing", ["flat", "tuple"])
def test_gradcheck(method, t, tols, packing, monkeypatch):
    # "tuple": the backward solves this small tensor state as a tuple, as it does a large one.
    monkeypatch.setattr("odekern.adjoint.TUPLE_PACKING_MIN_NUMEL", 1 if packing == "tuple" else 1 << 62)
    func, y0, _ = _make("mlp")
    y0 = y0.detach()[:1].requires_grad_(True)
    t = torch.tensor(t, dtype=F64, requires_grad=True)
    options = None
    params = tuple(func.parameters())

    def run(y0_, t_, *params_):
        # gradcheck perturbs func's own parameters in place; adjoint_params are those tensors.
        return odeint_adjoint(
            func, y0_, t_, method=method, options=options, adjoint_params=params_, **tols
        )

    # fast_mode checks random projections of the Jacobian: the same test at a fraction of the cost.
    assert torch.autograd.gradcheck(
        run, (y0, t, *params), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True
    )


# --------------------------------------------------------------------------- memory


class SavedTensorMeter:
    """Bytes of tensors held by autograd graphs (saved for backward), live and peak.

    Deterministic stand-in for peak memory: every tensor an autograd node saves passes
    through the pack hook; it counts as live until the graph holding it is freed.
    """

    class _Held:
        __slots__ = ("__weakref__", "tensor")

        def __init__(self, tensor):
            self.tensor = tensor

    def __init__(self):
        self.live = 0
        self.peak = 0

    def _release(self, nbytes):
        self.live -= nbytes

    def pack(self, tensor):
        held = self._Held(tensor)
        nbytes = tensor.numel() * tensor.element_size()
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(held, self._release, nbytes)
        return held

    @staticmethod
    def unpack(held):
        return held.tensor

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


def _peak_saved_bytes(solve, steps: int) -> tuple[int, int]:
    """(peak after forward, peak over forward+backward) for ``steps`` rk4 steps on a conv RHS."""
    func = ConvRHS(channels=2, dtype=torch.float32)
    y0 = randn(1, 2, 6, 6, dtype=torch.float32, seed=6, requires_grad=True)
    t = torch.tensor([0.0, 1.0])
    meter = SavedTensorMeter()
    with meter.hooks():
        ys = solve(func, y0, t, method="rk4", options={"step_size": 1.0 / steps})
        after_forward = meter.peak
        ys[-1].square().sum().backward()
    return after_forward, meter.peak


def test_adjoint_memory_flat_in_steps():
    fwd4, total4 = _peak_saved_bytes(odeint_adjoint, 4)
    fwd64, total64 = _peak_saved_bytes(odeint_adjoint, 64)
    assert fwd4 > 0, "the meter saw nothing: the proxy is broken"
    assert fwd64 == fwd4, f"adjoint forward holds {fwd4} B at 4 steps but {fwd64} B at 64"
    assert total64 <= 1.1 * total4, (
        f"adjoint peak grew from {total4} B (4 steps) to {total64} B (64)"
    )
    # The proxy does see step-proportional graphs: backprop through the same solve grows ~16x.
    bp4, _ = _peak_saved_bytes(odeint, 4)
    bp64, _ = _peak_saved_bytes(odeint, 64)
    assert bp64 >= 8 * bp4, (
        f"backprop saved bytes {bp4} -> {bp64}: the meter is not measuring the graph"
    )


# --------------------------------------------------------------------------- bad input


def test_plain_function_without_adjoint_params_raises():
    with pytest.raises(ValueError, match="func must be an nn.Module.*adjoint_params"):
        odeint_adjoint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]))


def test_adjoint_method_without_adjoint_options_raises():
    func, y0, t = _make("linear")
    with pytest.raises(ValueError, match="adjoint_options"):
        odeint_adjoint(
            func, y0, t, method="rk4", options={"step_size": 0.1}, adjoint_method="dopri5"
        )


def test_non_tensor_t_raises():
    # (A list or tuple of numbers is taken, as by odeint: tests/solvers/test_time_as_numbers.py.)
    func, y0, _ = _make("linear")
    with pytest.raises(TypeError, match="t must be a torch.Tensor"):
        odeint_adjoint(func, y0, "0, 1")


def test_bad_adjoint_params_raises():
    func, y0, t = _make("linear")
    with pytest.raises(TypeError, match=r"adjoint_params\[0\] must be a torch.Tensor"):
        odeint_adjoint(func, y0, t, adjoint_params=(1.0,))


def test_per_element_tolerance_needs_scalar_adjoint_tolerance():
    func, y0, t = _make("linear")
    with pytest.raises(ValueError, match="adjoint_rtol must be a scalar"):
        odeint_adjoint(func, y0, t, rtol=torch.full_like(y0, 1e-6).detach())


def test_on_max_steps_return_raises():
    func, y0, t = _make("linear")
    with pytest.raises(ValueError, match="on_max_steps'] must be 'raise'"):
        odeint_adjoint(func, y0, t, options={"on_max_steps": "return"})


def test_rhs_wrong_shape_in_backward_raises():
    """An RHS that misbehaves only when differentiated is caught by the backward solve."""
    func, y0, t = _make("linear")

    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = func

        def forward(self, t_, y):
            out = self.inner(t_, y)
            return out if not torch.is_grad_enabled() else out[..., :1]

    ys = odeint_adjoint(Bad(), y0, t, method="rk4", options={"step_size": 0.1})
    with pytest.raises(RuntimeError, match="func must return a tensor shaped like the state"):
        ys.sum().backward()
