"""method="scipy_solver" against torchdiffeq's scipy_solver: outputs, dtypes, devices, options,
tuple states, forward-only behaviour and failures.

Both call scipy.integrate.solve_ivp with the same arguments; the only difference is the time
handed to the RHS: torchdiffeq builds it with ``torch.tensor(t)``, which rounds a Python float
(some SciPy solvers pass one) through float32, while odekern keeps it in float64. The two
therefore agree within ``CROSS_LIBRARY_TOL``, not to rounding.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchdiffeq
from solver_problems import MLPODE, TupleOscillator

from odekern import odeint, odeint_adjoint
from odekern.solvers.state import real_dtype
from odekern.testing import assert_close, randn

DTYPES = [torch.float32, torch.float64]


def _quiet(solve, *args, **kwargs):
    # solve_ivp warns that min_step has no effect on solvers other than LSODA (in both libraries).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The following arguments have no effect")
        return solve(*args, **kwargs)


@pytest.mark.parametrize("solver", ["LSODA", "RK45", "DOP853", "Radau"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_torchdiffeq(solver, dtype):
    func = MLPODE(4, dtype=dtype)
    y0 = randn(3, 4, dtype=dtype, seed=3)
    t = torch.tensor([0.0, 0.33, 0.5, 1.2], dtype=dtype)
    for tt in (t, t.flip(0)):
        with torch.no_grad():
            y = _quiet(odeint, func, y0, tt, method="scipy_solver", options={"solver": solver})
            y_ref = _quiet(torchdiffeq.odeint, func, y0, tt, method="scipy_solver", options={"solver": solver})
        assert y.shape == y_ref.shape == (4, 3, 4) and y.dtype == dtype == y_ref.dtype
        assert_close(y, y_ref, kind="cross", msg=f"{solver} {dtype} t={tt.tolist()}")


def test_rhs_sees_the_state_dtype_and_shape_and_tolerances_reach_scipy():
    seen = []

    def rhs(t, y):
        seen.append((t.dtype, y.dtype, y.shape, t.device))
        return -y

    y0 = torch.ones(2, 3, dtype=torch.float32)
    t = torch.tensor([0.0, 1.0], dtype=torch.float32)
    loose = odeint(rhs, y0, t, method="scipy_solver", rtol=1e-3, atol=1e-4)
    n_loose = len(seen)
    tight = odeint(rhs, y0, t, method="scipy_solver", rtol=1e-10, atol=1e-12)
    assert {s[:3] for s in seen} == {(torch.float32, torch.float32, (2, 3))}
    assert len(seen) - n_loose > n_loose  # the tight solve took more evaluations
    exact = torch.exp(torch.tensor(-1.0))
    assert abs(float(tight[-1, 0, 0]) - exact) < abs(float(loose[-1, 0, 0]) - exact) + 1e-7


def test_single_time_returns_y0_and_tuple_states_work():
    y0 = randn(2, 3, dtype=torch.float64, seed=1)
    out = odeint(lambda t, y: -y, y0, torch.tensor([0.5], dtype=torch.float64), method="scipy_solver")
    assert torch.equal(out, y0[None])
    func = TupleOscillator()
    state = (randn(2, dtype=torch.float64, seed=1), randn(2, dtype=torch.float64, seed=2))
    t = torch.linspace(0, 2, 5, dtype=torch.float64)
    tight = {"rtol": 1e-10, "atol": 1e-12}
    with torch.no_grad():
        ys = odeint(func, state, t, method="scipy_solver", **tight)
        ref = odeint(func, state, t, method="dopri5", **tight)
    assert isinstance(ys, tuple) and len(ys) == 2
    for a, b in zip(ys, ref):
        assert a.shape == (5, 2)
        assert_close(a, b, kind="cross")


def test_forward_only_warns_when_a_gradient_is_expected_and_adjoint_gives_gradients():
    func = MLPODE(3)
    y0 = randn(2, 3, dtype=torch.float64, seed=4, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    with pytest.warns(UserWarning, match="forward only"):
        y = odeint(func, y0, t, method="scipy_solver")
    assert not y.requires_grad  # as torchdiffeq: nothing recorded
    # The adjoint solves its own backward problem with scipy too; compare with torchdiffeq's.
    tol = {"rtol": 1e-8, "atol": 1e-10}
    grads = []
    for solve in (odeint_adjoint, torchdiffeq.odeint_adjoint):
        y0_ = y0.detach().clone().requires_grad_()
        out = solve(func, y0_, t, method="scipy_solver", **tol)
        grads.append(torch.autograd.grad(out.sum(), [y0_, *func.parameters()]))
    for g, g_ref in zip(*grads):
        assert_close(g, g_ref, kind="cross")


def test_failed_solve_raises_with_scipys_message():
    # Finite-time blow-up: solve_ivp stops early; torchdiffeq would return fewer rows than times.
    y0 = torch.ones(1, dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"scipy_solver.*solve_ivp\(method='RK45'\) failed after the output time t=0\.5: Required step size"):
        _quiet(odeint, lambda t, y: y ** 2, y0, t, method="scipy_solver", options={"solver": "RK45"})


def test_unknown_scipy_method_is_scipys_error():
    y0 = torch.ones(2, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for solve in (odeint, torchdiffeq.odeint):
        with pytest.raises(ValueError, match="`method` must be one of"):
            solve(lambda t, y: -y, y0, t, method="scipy_solver", options={"solver": "RK99"})


@pytest.mark.parametrize("solver", ["RK45", "DOP853"])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=str)
def test_complex_state_is_integrated_in_the_complex_domain(solver, dtype):
    """dy/dt = (i - 0.5) y: y(t) = y0 exp((i - 0.5) t) rotates, so a solve that dropped the
    imaginary part (or cast the state to float64) is far off."""
    rate = torch.tensor(-0.5 + 1.0j, dtype=dtype)
    y0 = torch.tensor([1.0 + 1.0j, 2.0 - 0.5j, -0.3j], dtype=dtype)
    t = torch.tensor([0.0, 0.7, 2.0], dtype=real_dtype(dtype))
    y = _quiet(odeint, lambda t, y: rate * y, y0, t, method="scipy_solver", rtol=1e-10, atol=1e-12,
               options={"solver": solver})
    y_ref = _quiet(torchdiffeq.odeint, lambda t, y: rate * y, y0, t, method="scipy_solver", rtol=1e-10,
                   atol=1e-12, options={"solver": solver})
    exact = y0 * torch.exp(rate * t[:, None])
    assert y.dtype == dtype == y_ref.dtype
    assert_close(y, exact, atol=1e-5 if dtype == torch.complex64 else 1e-8, rtol=0.0)
    assert_close(y, y_ref, kind="cross")


def test_complex_state_with_a_real_domain_solver_raises_as_in_torchdiffeq():
    y0 = torch.tensor([1.0 + 1.0j], dtype=torch.complex128)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for solve in (odeint, torchdiffeq.odeint):
        with pytest.raises(ValueError, match="complex"):
            _quiet(solve, lambda t, y: -y, y0, t, method="scipy_solver", options={"solver": "LSODA"})


@pytest.mark.parametrize("solver", ["RK45", "LSODA"])
def test_zero_atol_where_the_state_is_zero_is_refused_before_scipy_loops(solver):
    # solve_ivp's RK45 never returns here (its first step is NaN); LSODA fails. Both are refused
    # up front with the argument named, as the native adaptive methods refuse it.
    y0 = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"at t=0 a component of the state y is 0 where atol is 0") as raised:
        odeint(lambda t, y: -y, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), rtol=1e-6, atol=0.0,
               method="scipy_solver", options={"solver": solver})
    assert isinstance(raised.value, AssertionError)
