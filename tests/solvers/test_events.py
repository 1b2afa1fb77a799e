"""Events: ``odeint(..., event_fn=...)`` and ``odekern.odeint_event`` (torchdiffeq's API).

The event time and its gradients (implicit function theorem, with respect to ``y0``, ``t0`` and
parameters) are checked against a closed form (free fall: both dopri5 and rk4 with cubic
interpolation are exact on its quadratic trajectory), against torchdiffeq on a nonlinear
problem, and by gradcheck in float64. A bouncing ball exercises repeated events.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchdiffeq
from torch import nn

import odekern
from odekern.testing import ODEINT_GRADCHECK_TOL, assert_close, tol

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
ATOL = 1e-11  # also the bisection tolerance on the event time
SOLVERS = {"dopri5": None, "rk4": {"step_size": 0.05, "interp": "cubic"}}


class Fall(nn.Module):
    """Height and velocity under gravity ``g`` with linear drag ``k`` (k = 0: free fall)."""

    def __init__(self, g=9.81, k=0.0, tuple_state=False):
        super().__init__()
        self.g = nn.Parameter(torch.tensor(g, dtype=F64))
        self.k = nn.Parameter(torch.tensor(k, dtype=F64))
        self.tuple_state = tuple_state

    def forward(self, t, y):
        h, v = y if self.tuple_state else y.unbind(-1)
        dv = -self.g - self.k * v
        return (v, dv) if self.tuple_state else torch.stack([v, dv], -1)


def _ground(t, y):
    return y[0] if isinstance(y, tuple) else y[..., 0]


def _solve_event(lib, func, y0, t0, method, interface="odeint", reverse_time=False):
    solve = getattr(lib, interface)
    kw = {"adjoint_params": tuple(func.parameters())} if interface == "odeint_adjoint" else {}
    return lib.odeint_event(func, y0, t0, event_fn=_ground, reverse_time=reverse_time, odeint_interface=solve,
                            method=method, options=SOLVERS[method], rtol=1e-10, atol=ATOL, **kw)


@pytest.mark.parametrize("method", list(SOLVERS))
@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
@pytest.mark.parametrize("reverse_time", [False, True], ids=["forward", "reverse"])
def test_event_time_and_gradients_match_the_closed_form(method, interface, reverse_time):
    h0, v0, g, t0 = 2.0, 1.5, 9.81, 0.25
    func = Fall(g)
    y0 = torch.tensor([h0, v0], dtype=F64, requires_grad=True)
    t0_ = torch.tensor(t0, dtype=F64, requires_grad=True)
    event_t, sol = _solve_event(odekern, func, y0, t0_, method, interface, reverse_time)
    s = math.sqrt(v0 ** 2 + 2 * g * h0)
    root = -1.0 if reverse_time else 1.0  # forward: the later root, backward: the earlier one
    duration = (v0 + root * s) / g
    assert_close(event_t, torch.tensor(t0 + duration, dtype=F64), kind="cross")
    assert_close(sol[-1][0], torch.tensor(0.0, dtype=F64), kind="cross")
    d_y0, d_t0, d_g = torch.autograd.grad(event_t, (y0, t0_, func.g))
    expected_y0 = torch.tensor([root / s, (1 + root * v0 / s) / g], dtype=F64)
    expected_g = root * h0 / (s * g) - duration / g
    assert_close(d_y0, expected_y0, kind="cross")
    assert_close(d_t0, torch.tensor(1.0, dtype=F64), kind="cross")
    assert_close(d_g, torch.tensor(expected_g, dtype=F64), kind="cross")


@pytest.mark.parametrize("method", list(SOLVERS))
@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
@pytest.mark.parametrize("tuple_state", [False, True], ids=["tensor", "tuple"])
def test_event_time_and_gradients_match_torchdiffeq(method, interface, tuple_state):
    results = []
    for lib in (odekern, torchdiffeq):
        func = Fall(9.81, k=0.7, tuple_state=tuple_state)
        h0 = torch.tensor(1.0, dtype=F64, requires_grad=True)
        v0 = torch.tensor(2.0, dtype=F64, requires_grad=True)
        t0 = torch.tensor(0.3, dtype=F64, requires_grad=True)
        y0 = (h0, v0) if tuple_state else torch.stack([h0, v0])
        event_t, sol = _solve_event(lib, func, y0, t0, method, interface)
        end = torch.stack([c[-1] for c in sol]) if tuple_state else sol[-1]
        loss = event_t + (end ** 2).sum()
        results.append((event_t, end, *torch.autograd.grad(loss, (h0, v0, t0, func.g, func.k))))
    for name, a, b in zip(["event_t", "state", "h0", "v0", "t0", "g", "k"], *results):
        assert_close(a, b, kind="cross", msg=name)


@pytest.mark.parametrize("method", list(SOLVERS))
def test_event_time_gradcheck(method):
    func = Fall(9.81, k=0.7)

    def event_time(y0, t0):
        return _solve_event(odekern, func, y0, t0, method)[0]

    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    t0 = torch.tensor(0.3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(event_time, (y0, t0), **ODEINT_GRADCHECK_TOL)


def _bounces(lib, y0, e, n, method):
    """A ball starting at ``y0 = (height, velocity)`` bouncing with restitution ``e``: the first ``n`` impact times.
    After each impact it restarts just above the ground (as torchdiffeq's example does) so the
    event function does not fire again at once."""
    func = Fall(9.81)
    state, t0, times = y0, torch.zeros((), dtype=F64), []
    func.tuple_state = True
    for _ in range(n):
        t0, sol = lib.odeint_event(func, state, t0, event_fn=_ground, method=method, options=SOLVERS[method],
                                   rtol=1e-10, atol=ATOL)
        state = (sol[0][-1] + 1e-9, -e * sol[1][-1])
        times.append(t0)
    return torch.stack(times)


@pytest.mark.parametrize("method", list(SOLVERS))
def test_bouncing_ball_repeated_events(method):
    h0 = torch.tensor(1.5, dtype=F64, requires_grad=True)
    v0 = torch.zeros((), dtype=F64, requires_grad=True)
    e = torch.tensor(0.8, dtype=F64, requires_grad=True)
    times = _bounces(odekern, (h0, v0), e, 3, method)
    g = 9.81
    t1 = math.sqrt(2 * 1.5 / g)
    expected = torch.tensor([t1, t1 * (1 + 2 * 0.8), t1 * (1 + 2 * 0.8 + 2 * 0.8 ** 2)], dtype=F64)
    # The 1e-9 restart height moves each later impact by about 1e-10 s.
    assert_close(times, expected, kind="cross")
    d_h0, d_e = torch.autograd.grad(times[-1], (h0, e))
    assert_close(d_h0, torch.tensor((1 + 2 * 0.8 + 2 * 0.8 ** 2) / (g * t1), dtype=F64), kind="cross")
    assert_close(d_e, torch.tensor(t1 * (2 + 4 * 0.8), dtype=F64), kind="cross")
    theirs = _bounces(torchdiffeq, (h0, v0), e, 3, method)
    assert_close(times, theirs, kind="cross")


@pytest.mark.parametrize("method,options", [("dopri5", None), ("rk4", {"step_size": 0.01}),
                                            ("implicit_adams", {"step_size": 0.01})])
@pytest.mark.parametrize("decreasing", [False, True])
def test_odeint_event_fn_matches_torchdiffeq(method, options, decreasing):
    """Plain ``odeint(event_fn=...)``: a multivariate event (the first element to cross wins),
    time running either way, event time in t's dtype and no gradient on it."""
    def event_fn(t, y):
        return torch.stack([y[0] - 0.2, y[1] + 0.9 * torch.sign(t)])

    t = torch.tensor([0.0, -1.0] if decreasing else [0.0, 1.0], dtype=torch.float32)
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    ours = odekern.odeint(Fall(4.0, k=0.1), y0, t, method=method, options=options, event_fn=event_fn,
                          rtol=1e-8, atol=1e-9)
    theirs = torchdiffeq.odeint(Fall(4.0, k=0.1), y0, t, method=method, options=options, event_fn=event_fn,
                                rtol=1e-8, atol=1e-9)
    assert ours[0].dtype == theirs[0].dtype == torch.float32
    assert not ours[0].requires_grad
    assert ours[1].shape == theirs[1].shape == (2, 2)
    assert_close(ours[0], theirs[0], **tol(torch.float32, "rounding"))
    assert_close(ours[1], theirs[1], kind="cross")


def test_odeint_event_fn_needs_two_times():
    with pytest.raises(ValueError, match=r"We require len\(t\) == 2 when in event handling mode, but got len\(t\)=3"):
        odekern.odeint(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0, 2.0]), event_fn=lambda t, y: y - 0.5)


def test_odeint_event_fn_refuses_what_it_cannot_do():
    args = (lambda t, y: -y, torch.ones(2, 1), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"per_sample' cannot be combined with event_fn"):
        odekern.odeint(*args, options={"control": "per_sample"}, event_fn=lambda t, y: y.sum() - 0.5)
    with pytest.raises(ValueError, match=r"on_max_steps'\]='return' cannot be combined with event_fn"):
        odekern.odeint(*args, options={"on_max_steps": "return"}, event_fn=lambda t, y: y.sum() - 0.5)
    with pytest.raises(ValueError, match=r"needs a scalar atol"):
        odekern.odeint(*args, atol=torch.full((2, 1), 1e-9), event_fn=lambda t, y: y.sum() - 0.5)
    with pytest.raises(RuntimeError, match=r"max_num_steps=3 exceeded before the event"):
        odekern.odeint(*args, options={"max_num_steps": 3}, event_fn=lambda t, y: y.sum() + 5.0)


def test_an_event_that_never_comes_ends_the_search_with_an_error(monkeypatch):
    """y' = -y never reaches 2: torchdiffeq's adaptive search steps on for 2**31 - 1 attempts (a
    hang). Without options['max_num_steps'] the search has a budget of its own (shrunk here to
    keep the test short); with it, the user's budget counts, larger or smaller."""
    from odekern.solvers import events

    monkeypatch.setattr(events, "ADAPTIVE_EVENT_STEPS", 200)
    never = dict(event_fn=lambda t, y: y.sum() - 2.0)
    args = (lambda t, y: -y, torch.ones(1, dtype=F64), torch.tensor(0.0, dtype=F64))
    with pytest.raises(RuntimeError, match=r"max_num_steps=200 exceeded before the event; reached t="):
        odekern.odeint_event(*args, **never)
    with pytest.raises(RuntimeError, match=r"max_num_steps=50 exceeded before the event"):
        odekern.odeint_event(*args, **never, options={"max_num_steps": 50})
    # An event 2000 time units away needs more attempts than the default here, fewer than the user's.
    far = dict(event_fn=lambda t, y: t - 2000.0)
    with pytest.raises(RuntimeError, match=r"max_num_steps=200 exceeded"):
        odekern.odeint_event(*args, **far)
    event_t, _ = odekern.odeint_event(*args, **far, options={"max_num_steps": 100_000})
    assert abs(float(event_t) - 2000.0) < 1e-6


@pytest.mark.parametrize("transform", ["grad", "jacrev", "jvp", "forward_ad"])
@pytest.mark.parametrize("tuple_state", [False, True], ids=["tensor", "tuple"])
def test_event_time_derivatives_under_torch_func_match_the_closed_form(transform, tuple_state):
    """Inside torch.func transforms and forward-mode AD (where torchdiffeq's odeint_event raises)
    the event time's derivatives are the closed form's, with respect to y0 and to func's
    parameters (through functional_call)."""
    h0, v0, g, t0 = 2.0, 1.5, 9.81, 0.25
    func = Fall(g, tuple_state=tuple_state)
    s = math.sqrt(v0 ** 2 + 2 * g * h0)
    duration = (v0 + s) / g
    expected_y0 = torch.tensor([1 / s, (1 + v0 / s) / g], dtype=F64)
    expected_g = h0 / (s * g) - duration / g

    def event_time(y0, params=None):
        state = tuple(y0.unbind()) if tuple_state else y0
        f = func if params is None else (lambda t, y: torch.func.functional_call(func, params, (t, y)))
        return odekern.odeint_event(f, state, torch.tensor(t0, dtype=F64), event_fn=_ground, method="dopri5",
                                    rtol=1e-10, atol=ATOL)[0]

    y0 = torch.tensor([h0, v0], dtype=F64)
    params = {k: v.detach() for k, v in func.named_parameters()}
    if transform == "grad":
        d_y0, d_params = torch.func.grad(event_time, argnums=(0, 1))(y0, params)
        assert_close(d_y0, expected_y0, kind="cross")
        assert_close(d_params["g"], torch.tensor(expected_g, dtype=F64), kind="cross")
    elif transform == "jacrev":
        assert_close(torch.func.jacrev(event_time)(y0), expected_y0, kind="cross")
    elif transform == "jvp":
        direction = torch.tensor([0.3, -0.8], dtype=F64)
        _, tangent = torch.func.jvp(event_time, (y0,), (direction,))
        assert_close(tangent, (expected_y0 * direction).sum(), kind="cross")
    else:
        import torch.autograd.forward_ad as fwAD

        with fwAD.dual_level():
            dual = fwAD.make_dual(y0, torch.tensor([1.0, 0.0], dtype=F64))
            tangent = fwAD.unpack_dual(event_time(dual)).tangent
        assert_close(tangent, expected_y0[0], kind="cross")


def test_second_derivatives_and_vmap_of_the_event_time_are_refused():
    """The rerouting holds f and dg/dy at the event constant, so nested differentiating
    transforms would give wrong second derivatives (they gave 0): they raise instead, as vmap does
    (it raised torch's own data-dependent control flow error)."""
    func = Fall(9.81)

    def event_time(y0):
        return odekern.odeint_event(func, y0, 0.0, event_fn=_ground, method="rk4", options=SOLVERS["rk4"],
                                    atol=ATOL)[0]

    y0 = torch.tensor([2.0, 1.5], dtype=F64)
    with pytest.raises(RuntimeError, match="second derivatives of the event time"):
        torch.func.grad(lambda y: torch.func.grad(event_time)(y)[0])(y0)
    with pytest.raises(RuntimeError, match="second derivatives of the event time"):
        torch.func.jvp(torch.func.grad(event_time), (y0,), (torch.ones_like(y0),))
    # The event time comes from root finding on the state's values, which vmap cannot branch on.
    with pytest.raises(ValueError, match="cannot run under torch.func.vmap"):
        torch.func.vmap(torch.func.grad(event_time))(torch.stack([y0, 1.1 * y0]))


def test_second_derivatives_of_the_event_time_are_refused_in_eager_autograd_too():
    """The same in eager autograd: a gradient taken with create_graph=True is right, and
    differentiating it raises (it was a wrong second derivative, the event terms held constant)."""
    func = Fall(9.81)
    y0 = torch.tensor([2.0, 1.5], dtype=F64, requires_grad=True)

    def event_time():
        return odekern.odeint_event(func, y0, 0.0, event_fn=_ground, method="rk4", options=SOLVERS["rk4"],
                                    atol=ATOL)[0]

    want, = torch.autograd.grad(event_time(), y0)
    got, = torch.autograd.grad(event_time(), y0, create_graph=True)
    assert_close(got, want)
    with pytest.raises(RuntimeError, match="second derivatives of the event time"):
        torch.autograd.grad(got.sum(), y0)
