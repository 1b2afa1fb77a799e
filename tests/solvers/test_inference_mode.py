"""Every entry point under ``torch.inference_mode()``, where prediction code runs: the values are
those of ``torch.no_grad()`` bit for bit. Tensors made there are inference tensors, which have no
version counter: odekern's watch for an RHS writing into its input (which reads the counters)
must stand aside there instead of failing the solve (torchdiffeq has no such watch)."""

from __future__ import annotations

import pytest
import torch
from solver_problems import TanhField

import odekern
from odekern.solvers.registry import ADAPTIVE_METHODS, METHODS
from odekern.testing import randn

F64 = torch.float64
T = torch.tensor([0.0, 0.5, 1.0], dtype=F64)


def _both(solve):
    """``solve()`` under torch.no_grad() and under torch.inference_mode()."""
    with torch.no_grad():
        reference = solve()
    with torch.inference_mode():
        got = solve()
    return got, reference


def _assert_same(got, reference):
    got = got if isinstance(got, (tuple, list)) else (got,)
    reference = reference if isinstance(reference, (tuple, list)) else (reference,)
    assert len(got) == len(reference)
    for a, b in zip(got, reference):
        if isinstance(a, (tuple, list)):
            _assert_same(a, b)
        else:
            assert torch.equal(a, b)


def _options(method):
    return None if method in ADAPTIVE_METHODS or method == "scipy_solver" else {"step_size": 0.125}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_odeint_every_method(method):
    y0 = randn(2, 3, dtype=F64, seed=1)
    _assert_same(*_both(lambda: odekern.odeint(TanhField(), y0, T, method=method, options=_options(method))))


def test_odeint_tuple_state_and_per_sample_control():
    y0 = randn(2, 3, dtype=F64, seed=2)
    _assert_same(*_both(lambda: odekern.odeint(lambda t, y: (-y[1], y[0]), (y0, 2 * y0), T)))
    _assert_same(*_both(lambda: odekern.odeint(TanhField(), y0, T, options={"control": "per_sample"})))


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_gradient_mode_entry_points(method):
    y0 = randn(2, 3, dtype=F64, seed=3)
    func = TanhField()
    options = _options(method)
    _assert_same(*_both(lambda: odekern.odeint_adjoint(func, y0, T, method=method, options=options)))
    _assert_same(*_both(lambda: odekern.odeint_checkpointed(func, y0, T, checkpoints=2, method=method,
                                                            options=options)))


def test_events_and_dense_output():
    y0 = torch.ones(3, dtype=F64)
    decay = lambda t, y: -y  # noqa: E731
    crossing = lambda t, y: y.sum() - 1.0  # noqa: E731
    _assert_same(*_both(lambda: odekern.odeint(decay, y0, T[[0, -1]], event_fn=crossing)))
    _assert_same(*_both(lambda: odekern.odeint_event(decay, y0, T[0], event_fn=crossing)))
    _assert_same(*_both(lambda: odekern.odeint_dense(decay, y0, T[0], T[-1])(T)))


@pytest.mark.parametrize("gradient", ["backprop", "adjoint", "checkpoint"])
@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_ode_block(gradient, method):
    x = randn(2, 3, dtype=F64, seed=4)
    block = odekern.ODEBlock(TanhField(), method=method, gradient=gradient,
                             **({"step_size": 0.125} if method == "rk4" else {}))
    _assert_same(*_both(lambda: block(x)))


def test_second_order_block_and_a_block_made_under_inference_mode():
    x = randn(2, 3, dtype=F64, seed=5)
    block = odekern.ODEBlock(lambda t, x, v: -x - 0.1 * v, order=2, method="rk4", step_size=0.125)
    _assert_same(*_both(lambda: block(x)))
    with torch.inference_mode():
        made_there = odekern.ODEBlock(TanhField(), method="rk4", step_size=0.125)
        made_there.load_state_dict(odekern.ODEBlock(TanhField(), method="rk4", step_size=0.125).state_dict())
    with torch.no_grad():  # its parameters are inference tensors: no graph may record them
        assert torch.equal(made_there(x), odekern.ODEBlock(TanhField(), method="rk4", step_size=0.125)(x))


@pytest.mark.parametrize("control", ["global", "per_element"])
def test_fused_nmode_solve(control):
    y0, g = randn(2, 3, 4, 4, seed=6), randn(1, 3, 4, 4, seed=7)
    _assert_same(*_both(lambda: odekern.nmode_solve(y0, g, control=control)))
    block = odekern.NmODE(3, 4, 4, control=control)
    _assert_same(*_both(lambda: block(y0)))


def test_an_rhs_writing_into_its_input_is_solved_as_elsewhere():
    """The in-place write cannot be noticed on an inference tensor (no warning there); the solve
    runs as it does elsewhere."""

    def scaling_in_place(t, y):
        y.mul_(1.0)
        return -y

    y0 = torch.ones(3, dtype=F64)
    with torch.inference_mode():
        got = odekern.odeint(scaling_in_place, y0, T, method="rk4", options={"step_size": 0.125})
    with torch.no_grad(), pytest.warns(UserWarning, match="modified its input y in place"):
        reference = odekern.odeint(scaling_in_place, y0, T, method="rk4", options={"step_size": 0.125})
    assert torch.equal(got, reference)
