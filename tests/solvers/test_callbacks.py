"""torchdiffeq's step callbacks: ``func.callback_step`` / ``callback_accept_step`` /
``callback_reject_step`` and their ``*_adjoint`` variants for the adjoint's backward solve.

Every call (name, t0, dt, kind of y0) is logged and compared with torchdiffeq's on the same
problem: the same calls in the same order (float64, where both libraries take the same steps),
the same warnings for callbacks a fixed-grid method never calls, and the same calls whichever
kernel backend runs the stage arithmetic.
"""

from __future__ import annotations

import ast
import warnings

import pytest
import torch
import torchdiffeq
from solver_problems import MLPODE

import odekern
from odekern.solvers.base import ADJOINT_CALLBACK_NAMES, CALLBACK_NAMES
from odekern.testing import randn

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
ALL_NAMES = CALLBACK_NAMES + ADJOINT_CALLBACK_NAMES


class Logged(MLPODE):
    """An MLP right-hand side that logs every callback torchdiffeq's protocol defines (or the
    subset ``names``); ``tuple_state``: the state is ``(y, y)`` solved as a tuple."""

    def __init__(self, names=ALL_NAMES, tuple_state=False, n=3):
        super().__init__(n, seed=3)
        self.log = []
        self.tuple_state = tuple_state
        for name in names:
            setattr(self, name, self._logger(name))

    def _logger(self, name):
        def callback(t0, y0, dt):
            kind = f"tuple{len(y0)}" if isinstance(y0, tuple) else "tensor"
            self.log.append((name, float(t0), float(dt), kind))
        return callback

    def forward(self, t, y):
        if self.tuple_state:
            return tuple(super(Logged, self).forward(t, c) for c in y)
        return super().forward(t, y)


def _run(lib, method, options, *, names=ALL_NAMES, adjoint=False, decreasing=False, tuple_state=False, n=3):
    func = Logged(names, tuple_state, n)
    y0 = randn(2, n, dtype=F64, seed=1).requires_grad_(True)
    state = (y0, 0.5 * y0) if tuple_state else y0
    t = torch.tensor([0.0, 0.6, 1.3], dtype=F64)
    t = t.flip(0) if decreasing else t
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        solve = lib.odeint_adjoint if adjoint else lib.odeint
        sol = solve(func, state, t, method=method, options=options, rtol=1e-7, atol=1e-9)
        if adjoint:
            loss = sum(s.sum() for s in sol) if tuple_state else sol.sum()
            loss.backward()
    return func.log, sorted({str(w.message) for w in caught if "callback" in str(w.message)})


def _assert_same_calls(ours, theirs):
    """The same callbacks, in the same order, with the same kind of state; times and step sizes
    to 1e-9 relative: an adaptive step size follows the last digits of an error estimate far
    below the tolerance, whose rounding differs between the libraries' arithmetic
    (docs/methods.md), so the sizes can part by a few ulps times the step count."""
    assert [(c[0], c[3]) for c in ours] == [(c[0], c[3]) for c in theirs]
    assert [v for c in ours for v in c[1:3]] == pytest.approx([v for c in theirs for v in c[1:3]], rel=1e-9, abs=1e-12)


CASES = [("dopri5", None), ("rk4", {"step_size": 0.1}), ("euler", None), ("implicit_adams", {"step_size": 0.1})]


@pytest.mark.filterwarnings("ignore:.*did not converge")
@pytest.mark.parametrize("method,options", CASES, ids=[m for m, _ in CASES])
@pytest.mark.parametrize("decreasing", [False, True], ids=["increasing", "decreasing"])
@pytest.mark.parametrize("tuple_state", [False, True], ids=["tensor", "tuple"])
def test_forward_callbacks_match_torchdiffeq(method, options, decreasing, tuple_state):
    ours, our_warnings = _run(odekern, method, options, decreasing=decreasing, tuple_state=tuple_state)
    theirs, their_warnings = _run(torchdiffeq, method, options, decreasing=decreasing, tuple_state=tuple_state)
    _assert_same_calls(ours, theirs)
    assert our_warnings == their_warnings
    if method != "dopri5":
        # The message shows a set (as torchdiffeq's does): its order follows string hashing.
        prefix = f"Solver '{method}' does not support callbacks "
        assert len(our_warnings) == 1 and our_warnings[0].startswith(prefix)
        assert ast.literal_eval(our_warnings[0][len(prefix):]) == {"callback_accept_step", "callback_reject_step"}
    if method == "dopri5":
        names = {name for name, *_ in ours}
        assert names == {"callback_step", "callback_accept_step", "callback_reject_step"} or \
            names == {"callback_step", "callback_accept_step"}


@pytest.mark.parametrize("method,options", CASES[:2], ids=[m for m, _ in CASES[:2]])
def test_adjoint_callbacks_match_torchdiffeq(method, options):
    """The backward solve calls the ``*_adjoint`` callbacks, as often and in the same order as
    torchdiffeq's (the backward state is the tuple (a_t, y, a_y, *a_params)). Their times are
    the user's (torchdiffeq hands negated times when ``t`` decreases; see
    docs/migrating-from-torchdiffeq.md)."""
    ours, _ = _run(odekern, method, options, adjoint=True)
    theirs, _ = _run(torchdiffeq, method, options, adjoint=True)
    _assert_same_calls([c for c in ours if c[0] in CALLBACK_NAMES], [c for c in theirs if c[0] in CALLBACK_NAMES])
    our_backward = [c for c in ours if c[0] in ADJOINT_CALLBACK_NAMES]
    their_backward = [c for c in theirs if c[0] in ADJOINT_CALLBACK_NAMES]
    assert len(our_backward) == len(their_backward) > 0
    assert [c[0] for c in our_backward] == [c[0] for c in their_backward]
    for (_, t_a, dt_a, kind_a), (_, t_b, dt_b, kind_b) in zip(our_backward, their_backward):
        assert kind_a == kind_b == "tuple6"  # a_t, y, a_y and the three parameter adjoints
        # The backward step sizes follow from error norms of the backward state, whose rounding
        # differs between the libraries: the same steps are taken, at slightly different sizes.
        assert 0.0 <= t_a <= 1.3 and dt_a > 0


def test_only_the_callbacks_func_has_are_called():
    ours, our_warnings = _run(odekern, "dopri5", None, names=("callback_accept_step",))
    theirs, their_warnings = _run(torchdiffeq, "dopri5", None, names=("callback_accept_step",))
    _assert_same_calls(ours, theirs)
    assert {c[0] for c in ours} == {"callback_accept_step"}
    assert not our_warnings and not their_warnings


def test_fixed_grid_with_only_step_callbacks_does_not_warn():
    ours, our_warnings = _run(odekern, "rk4", {"step_size": 0.1}, names=("callback_step",))
    assert len(ours) == 13 and not our_warnings  # 1.3 / 0.1 steps


def test_callbacks_are_called_on_every_backend(backend):
    """The fused stage kernels only do the arithmetic between RHS calls; the step loop (and its
    callbacks) is the same Python loop for every backend (a forced backend runs whatever the
    state's size)."""
    reference, _ = _run(odekern, "dopri5", None, names=CALLBACK_NAMES, n=16)
    with odekern.use_backend(backend):
        fused, _ = _run(odekern, "dopri5", None, names=CALLBACK_NAMES, n=16)
    assert [c[0] for c in fused] == [c[0] for c in reference]
    assert len(fused) > 0


@pytest.mark.parametrize("gradient", ["backprop", "adjoint", "checkpoint"])
def test_ode_block_calls_step_callbacks_once_per_step_in_every_gradient_mode(gradient):
    # The checkpoint mode recomputes steps in backward: those recomputations are not reported.
    func = Logged(CALLBACK_NAMES[:1])
    block = odekern.ODEBlock(func, t=(0.0, 1.0), method="rk4", step_size=0.125, gradient=gradient, checkpoints=2)
    block(randn(2, 3, dtype=F64, seed=1)).sum().backward()
    assert [c[1] for c in func.log] == pytest.approx([k * 0.125 for k in range(8)], rel=1e-12, abs=1e-12)
