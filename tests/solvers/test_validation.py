"""Every bad input raises a clear exception: type AND message (naming the argument) asserted."""

from __future__ import annotations

import math
import re

import pytest
import torch
from solver_problems import Decay

import odekern
from odekern import odeint, odeint_adjoint
from odekern.solvers import NonFiniteError
from odekern.testing import assert_close
from odekern.solvers.checks import check_params, check_state_matches_time

F64 = torch.float64


def _y0():
    return torch.ones(2, 3, dtype=F64)


def _t():
    return torch.tensor([0.0, 0.5, 1.0], dtype=F64)


def _decay(t, y):
    return -y


@pytest.mark.parametrize("t, exc, match", [
    ("0, 1", TypeError, r"t must be a torch.Tensor of time points, got str"),
    (torch.tensor([0, 1]), TypeError, r"t must be a floating point tensor, got dtype torch.int64"),
    (torch.zeros(2, 2, dtype=F64), ValueError, r"t must be 1-D .*got shape \(2, 2\)"),
    (torch.zeros(0, dtype=F64), ValueError, r"t must contain at least one time point"),
    (torch.tensor([0.0, float("nan")], dtype=F64), ValueError, r"t must be finite"),
    (torch.tensor([0.0, 0.5, 0.2], dtype=F64), ValueError,
     r"t must be strictly increasing or strictly decreasing, but t\[1\]=0.5 and t\[2\]=0.2"),
    (torch.tensor([0.0, 0.5, 0.5], dtype=F64), ValueError, r"t must be strictly increasing or strictly decreasing"),
], ids=["str", "int", "2d", "empty", "nan", "non-monotonic", "repeated"])
def test_bad_t(t, exc, match):
    with pytest.raises(exc, match=match):
        odeint(_decay, _y0(), t)


@pytest.mark.parametrize("y0, exc, match", [
    ([1.0, 2.0], TypeError, r"y0 must be a torch.Tensor or a tuple of tensors, got list"),
    (torch.ones(3, dtype=torch.int32), TypeError, r"y0 must be a floating point tensor .*got dtype torch.int32"),
    (torch.tensor([1.0, float("inf")], dtype=F64), ValueError, r"y0 must be finite, but it contains NaN or inf"),
    (torch.tensor([float("nan")], dtype=F64), ValueError, r"y0 must be finite"),
    ((torch.ones(2, dtype=F64), torch.ones(2, dtype=torch.int64)), TypeError, r"y0\[1\] must be a floating point"),
    ((), ValueError, r"y0 must be a tensor or a non-empty tuple"),
], ids=["list", "int", "inf", "nan", "tuple-int", "tuple-empty"])
@pytest.mark.parametrize("entry", ["odeint", "odeint_adjoint"])
def test_bad_y0(y0, exc, match, entry):
    # odeint_adjoint checks y0's type itself and leaves its values to the forward solve's check.
    solve = odeint if entry == "odeint" else lambda *a: odeint_adjoint(*a, adjoint_params=())
    with pytest.raises(exc, match=match):
        solve(_decay, y0, _t())


def test_dtype_mismatch_between_y0_and_t_follows_the_state():
    # torchdiffeq's rule (tests/solvers/test_torchdiffeq_dropin.py checks the numbers): the
    # solution has y0's dtype whatever t's floating dtype is.
    assert odeint(_decay, torch.ones(3), _t()).dtype == torch.float32


def test_device_mismatch_between_y0_and_t():
    # No second real device on this machine: the meta device stands in for "another device".
    with pytest.raises(ValueError, match=r"y0 and t must be on the same device, got y0 on cpu and t on meta"):
        check_state_matches_time(_y0(), torch.empty(3, dtype=F64, device="meta"))


def test_param_dtype_and_device_mismatch():
    with pytest.raises(TypeError, match=r"params\[1\] has dtype torch.float32 but y0 has dtype torch.float64"):
        check_params([torch.ones(2, dtype=F64), torch.ones(2)], _y0())
    with pytest.raises(ValueError, match=r"params\[0\] is on meta but y0 is on cpu"):
        check_params([torch.ones(2, dtype=F64, device="meta")], _y0())


@pytest.mark.parametrize("step_size", [0.0, -0.1, float("nan")])
def test_step_size_must_be_positive(step_size):
    with pytest.raises(ValueError, match=r"options\['step_size'\] must be > 0"):
        odeint(_decay, _y0(), _t(), method="rk4", options={"step_size": step_size})


def test_step_size_wrong_type():
    with pytest.raises(TypeError, match=r"options\['step_size'\] must be a positive number, got str"):
        odeint(_decay, _y0(), _t(), method="euler", options={"step_size": "0.1"})


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match=r"method 'rk45' is not a known solver; valid methods: 'adaptive_heun', "
                                         r"'bosh3', 'dopri5', 'dopri8', 'euler', 'explicit_adams', 'fehlberg2', "
                                         r"'fixed_adams', 'heun2', 'heun3', 'implicit_adams', 'midpoint', 'rk4', "
                                         r"'rk4_classic', 'scipy_solver', 'tsit5'"):
        odeint(_decay, _y0(), _t(), method="rk45")


@pytest.mark.parametrize("method, option", [("rk4", "max_num_steps"), ("dopri5", "step_size"),
                                            ("euler", "max_order"), ("explicit_adams", "first_step"),
                                            ("dopri5", "bogus")])
def test_unknown_option_warns_as_torchdiffeq(method, option):
    with pytest.warns(UserWarning, match=rf": Unexpected arguments \{{'{option}': 1\}}"):
        odeint(_decay, _y0(), _t(), method=method, options={option: 1})


@pytest.mark.parametrize("method, options, exc, match", [
    ("rk4", {"step_size": 0.1, "grid_constructor": lambda f, y, t: t}, ValueError, r"mutually exclusive"),
    ("rk4", {"interp": "quadratic"}, ValueError, r"options\['interp'\] must be 'linear' or 'cubic'"),
    ("implicit_adams", {"max_order": 13}, ValueError, r"options\['max_order'\] must be an int in \[1, 12\]"),
    ("implicit_adams", {"max_iters": 0}, ValueError, r"options\['max_iters'\] must be an int >= 1"),
    ("dopri5", {"max_num_steps": 0}, ValueError, r"options\['max_num_steps'\] must be an int >= 1"),
    ("dopri5", {"min_step": 0.5, "max_step": 0.1}, ValueError, r"options\['min_step'\] \(0.5\) must not exceed"),
    ("dopri5", {"first_step": -1.0}, ValueError, r"options\['first_step'\] must be > 0"),
    ("dopri5", {"on_max_steps": "ignore"}, ValueError, r"options\['on_max_steps'\] must be one of \['raise', 'return'\]"),
    ("dopri5", {"norm": "l1"}, ValueError, r"options\['norm'\] must be a callable or one of \['rms', 'max'\]"),
    ("rk4", {"control": "per_sample"}, ValueError, r"options\['control'\]='per_sample' only applies to adaptive methods"),
    ("dopri5", {"control": "local"}, ValueError, r"options\['control'\] must be one of \['global', 'per_sample'\]"),
    ("dopri5", {"step_t": [0.3], "jump_t": [0.3]}, ValueError, r"must not share any time point"),
], ids=["exclusive", "interp", "max_order", "max_iters", "max_num_steps", "min>max", "first_step", "on_max_steps",
        "norm", "per_sample-fixed", "control", "step_t-jump_t"])
def test_bad_option_values(method, options, exc, match):
    with pytest.raises(exc, match=match):
        odeint(_decay, _y0(), _t(), method=method, options=options)


@pytest.mark.parametrize("name, value, exc, match", [
    ("rtol", -1e-3, ValueError, r"rtol must be finite and >= 0, got -0.001"),
    ("atol", float("inf"), ValueError, r"atol must be finite and >= 0"),
    ("rtol", "tight", TypeError, r"rtol must be a float or a tensor, got str"),
    ("atol", torch.tensor(1e-6, requires_grad=True), ValueError, r"atol must not require grad"),
])
def test_bad_tolerances(name, value, exc, match):
    with pytest.raises(exc, match=match):
        odeint(_decay, _y0(), _t(), **{name: value})


@pytest.mark.parametrize("method", ["dopri5", "rk4", "implicit_adams"])
def test_rhs_returning_wrong_shape(method):
    with pytest.raises(ValueError, match=r"func\(t, y\) returned shape \(3,\) but the state y has shape \(2, 3\)"):
        odeint(lambda t, y: y[0], _y0(), _t(), method=method)


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
@pytest.mark.parametrize("out_dtype", [torch.float64, torch.int64], ids=["float64", "int64"])
def test_rhs_returning_another_real_dtype_is_cast_to_the_state_like_torchdiffeq(method, out_dtype):
    """A float64 buffer in the RHS of a float32 state (or an integer dy/dt): torchdiffeq solves it
    through its arithmetic; a TypeError here broke such code when switching the import."""
    import torchdiffeq

    def func(t, y):
        return (-1.5 * y).to(out_dtype) if out_dtype.is_floating_point else torch.ones_like(y, dtype=out_dtype)

    y0, t = _y0().float(), _t().float()
    options = {"step_size": 0.1} if method == "rk4" else None
    ours = odeint(func, y0, t, method=method, options=options)
    assert ours.dtype == torch.float32
    assert_close(ours, torchdiffeq.odeint(func, y0, t, method=method, options=options), kind="cross")


def test_rhs_returning_wrong_dtype_or_type():
    with pytest.raises(TypeError, match=r"func\(t, y\) returned dtype torch.complex64 but the state y has dtype "
                                        r"torch.float32; a complex dy/dt needs a complex state"):
        odeint(lambda t, y: y + 0j, _y0().float(), _t().float())
    with pytest.raises(TypeError, match=r"func\(t, y\) must return a torch.Tensor \(dy/dt\), got float"):
        odeint(lambda t, y: 1.0, _y0(), _t(), method="euler")
    with pytest.raises(TypeError, match=r"func\(t, y\) must return a tuple of 2 tensors for a tuple state y0"):
        odeint(lambda t, y: y[0], (torch.ones(2, dtype=F64), torch.ones(1, dtype=F64)), _t())


# f is NaN for t > 0.5. With step 0.125, Euler and Adams-Bashforth evaluate f only at step starts,
# so the first NaN comes from the step starting at 0.625; RK4 / the corrector evaluate at the step
# end, so it comes from the step starting at 0.5; dopri5 closes in on 0.5 until dt underflows.
NAN_REACHED = {"dopri5": "0.5", "euler": "0.625", "rk4": "0.5", "explicit_adams": "0.625", "implicit_adams": "0.5"}


@pytest.mark.filterwarnings("ignore:.*did not converge")
@pytest.mark.parametrize("method", sorted(NAN_REACHED))
def test_non_finite_mid_solve_names_the_time(method):
    def blows_up(t, y):
        return torch.where(t > 0.5, torch.full_like(y, float("nan")), -y)

    t = torch.tensor([0.0, 0.25, 1.0], dtype=F64)
    reached = NAN_REACHED[method].replace(".", r"\.")
    with pytest.raises(NonFiniteError, match=rf"odeint\(method='{method}'\): the solution became non-finite "
                                             rf"\(NaN or inf\) after t={reached}:"):
        odeint(blows_up, _y0(), t, method=method, options=None if method == "dopri5" else {"step_size": 0.125})
    # NonFiniteError is a RuntimeError too, so generic solver-failure handlers catch it.
    assert issubclass(NonFiniteError, RuntimeError)


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "dopri8"])
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_func_at_the_start_of_an_adaptive_solve_names_it(method, bad):
    # Choosing the first step divides by |f0|: a non-finite f0 is named, not left to surface as a
    # ZeroDivisionError or a zero-step "underflow" that blames stiffness (as torchdiffeq's does).
    with pytest.raises(NonFiniteError, match=rf"odeint\(method='{method}'\): .* after t=0\.25: "
                                             r"func\(t0, y0\) returned NaN/inf, so no first step can be chosen"):
        odeint(lambda t, y: y * bad, _y0(), torch.tensor([0.25, 1.0], dtype=F64), method=method)


ZERO_SCALE = r"at t=0 a component of the state y is 0 where atol is 0, so its error scale atol \+ rtol \* \|y\| is 0"


@pytest.mark.parametrize("options", [None, {"first_step": 0.1}, {"first_step": 0.1, "min_step": 0.01}])
@pytest.mark.parametrize("atol", [0.0, torch.tensor([0.0, 1e-9], dtype=F64)])
def test_zero_atol_where_the_state_is_zero_is_an_argument_error(options, atol):
    # Every error ratio of that component is 0/0: torchdiffeq and the unchecked solver stop with
    # a zero step, which reads like stiffness. Both AssertionError (as torchdiffeq) and ValueError.
    y0 = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match=ZERO_SCALE) as raised:
        odeint(_decay, y0, _t(), rtol=1e-6, atol=atol, options=options)
    assert isinstance(raised.value, AssertionError)


def test_zero_atol_is_fine_where_the_state_is_not_zero():
    y0 = torch.tensor([0.0, 1.0], dtype=F64)
    t = _t()
    out = odeint(_decay, y0, t, rtol=1e-9, atol=torch.tensor([1e-12, 0.0], dtype=F64))
    assert_close(out, y0 * torch.exp(-t)[:, None], rtol=1e-7, atol=1e-12)
    pair = odeint(lambda t, y: (-y[0], -y[1]), (y0, y0 + 1), t, rtol=1e-9, atol=(1e-12, 0.0))
    assert_close(pair[1], (y0 + 1) * torch.exp(-t)[:, None], rtol=1e-7, atol=0.0)
    with pytest.raises(ValueError, match=ZERO_SCALE):
        odeint(lambda t, y: (-y[0], -y[1]), (y0 + 1, y0), t, rtol=1e-9, atol=(1e-12, 0.0))


def test_zero_atol_in_the_adjoint_backward_points_to_adjoint_atol():
    # The backward state's parameter gradients start at 0: atol = 0 there fails in torchdiffeq too.
    w = torch.nn.Parameter(torch.tensor([0.5, 0.7], dtype=F64))
    out = odeint_adjoint(lambda t, y: -w * y, torch.tensor([1.0, 2.0], dtype=F64), _t(), rtol=1e-6, atol=0.0,
                         adjoint_params=(w,))
    with pytest.raises(ValueError, match=r"at t=1 a component of the state y is 0 where atol is 0.*adjoint_atol > 0"):
        out[-1].sum().backward()
    out = odeint_adjoint(lambda t, y: -w * y, torch.tensor([1.0, 2.0], dtype=F64), _t(), rtol=1e-6, atol=0.0,
                         adjoint_params=(w,), adjoint_atol=1e-9)
    out[-1].sum().backward()
    expected = -_t()[-1] * torch.tensor([1.0, 2.0], dtype=F64) * torch.exp(-w.detach() * _t()[-1])
    assert_close(w.grad, expected, rtol=1e-5, atol=1e-9)


def test_a_norm_returning_nan_is_named():
    with pytest.raises(ValueError, match=r"options\['norm'\] returned NaN/inf"):
        odeint(_decay, _y0(), _t(), options={"norm": lambda x: x.sum() * float("nan")})


@pytest.mark.parametrize("dtype, size, norm", [(torch.float32, 1e30, None), (torch.float32, 1e30, "max"),
                                              (torch.float64, 1e200, None)])
def test_a_derivative_too_large_for_the_error_norm_is_named_as_such(dtype, size, norm):
    """|f0| / atol overflows the dtype (float32) or the RMS norm's squares (float64): the message
    blamed a user norm even where none was given. torchdiffeq stops with 'underflow in dt'."""
    options = {} if norm is None else {"norm": norm}
    with pytest.raises(ValueError, match=re.escape(f"func(t0, y0) at t=0 is too large to measure against the "
                                                   f"tolerances: up to {size:.3g}")):
        odeint(lambda t, y: torch.full_like(y, size), torch.zeros(3, dtype=dtype),
               torch.tensor([0.0, 1.0], dtype=dtype), options=options)
    # The max norm squares nothing: in float64 it measures the same derivative, and y = size * t.
    if dtype == torch.float64:
        y = odeint(lambda t, y: torch.full_like(y, size), torch.zeros(3, dtype=dtype),
                   torch.tensor([0.0, 1.0], dtype=dtype), options={"norm": "max"})
        torch.testing.assert_close(y[-1], torch.full((3,), size, dtype=dtype), rtol=1e-12, atol=0)


def test_overflow_to_inf_is_reported_with_time():
    # y' = y^2 from y0 = 1 with Euler steps of 0.1: the iterates overflow to inf in finitely many
    # steps. Independent reference: the same recursion in Python floats.
    y, k = 1.0, 0
    while y * y < float("inf") and y + 0.1 * y * y < float("inf"):
        y, k = y + 0.1 * y * y, k + 1
    t_last_finite = round(0.1 * k, 10)
    with pytest.raises(NonFiniteError, match=rf"after t={t_last_finite:g}: the step to t="):
        odeint(lambda t, y: y * y, torch.ones(1, dtype=F64), torch.tensor([0.0, 5.0], dtype=F64),
               method="euler", options={"step_size": 0.1})


def test_finiteness_check_is_exact_when_the_fast_sum_overflows_or_cancels():
    from odekern.solvers.state import all_finite

    big = torch.full((4,), 3e38)  # finite float32 values whose sum overflows to inf
    assert all_finite(big) and all_finite((big, torch.zeros(2)))
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = torch.zeros(5)
        y[3] = bad
        assert not all_finite(y) and not all_finite((torch.ones(2), y))
    both = torch.tensor([float("inf"), -float("inf"), 1.0])  # sum is NaN, not inf: still caught
    assert not all_finite(both)


@pytest.mark.parametrize("method", ["euler", "rk4", "dopri5", "bosh3"])
def test_solve_of_finite_values_whose_sum_overflows_does_not_raise(method):
    # The per-step probe is a sum, which overflows to inf on these finite float32 values; the
    # solution must come back unchanged (f = 0), not as a NonFiniteError or a step retried until
    # it underflows.
    y0 = torch.full((1000,), 1e36)  # sum 1e39 > float32's 3.4e38; far enough from it to interpolate
    ys = odeint(lambda t, y: torch.zeros_like(y), y0, torch.tensor([0.0, 1.0]), method=method,
                options={"step_size": 0.25} if method in ("euler", "rk4") else None)
    assert_close(ys[-1], y0)  # adaptive: the dense output at t1 rounds


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_adaptive_output_interpolated_past_the_dtype_range_raises_instead_of_nan(method):
    # Every accepted state is finite (3e38, f = 0), but the dense output evaluated between them
    # overflows float32: torchdiffeq returns NaN there; odekern names the output time instead.
    with pytest.raises(NonFiniteError, match=r"output time t=1, interpolated between finite steps"):
        odeint(lambda t, y: torch.zeros_like(y), torch.full((4,), 3e38), torch.tensor([0.0, 1.0]), method=method)


def test_first_bad_step_of_a_long_solve_is_found():
    # 400 Euler steps of 1/400, f NaN from t > 0.75: the first NaN comes from the step starting
    # at the first grid time above 0.75 (Euler evaluates f at step starts), computed here
    # independently on the same float64 grid.
    n = 400
    grid = torch.linspace(0.0, 1.0, n + 1, dtype=F64)
    first_nan_start = float(grid[grid > 0.75][0])

    def nan_late(t, y):
        return torch.where(t > 0.75, torch.full_like(y, float("nan")), -y)

    with pytest.raises(NonFiniteError, match=rf"after t={first_nan_start:g}:"):
        odeint(nan_late, torch.ones(3, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method="euler",
               options={"step_size": 1.0 / n})


def test_non_finite_from_a_func_that_does_not_repeat_itself_names_the_output_times():
    # A solve checks only its final state; to name the step it repeats itself checking every
    # step. This func returns NaN on its fifth call only (the step from t=0.5 of the first
    # solve), so the repeat finishes: the error names the output times around the failure.
    calls = []

    def nan_once(t, y):
        calls.append(float(t))
        return torch.full_like(y, float("nan")) if len(calls) == 5 else -y

    with pytest.raises(NonFiniteError, match=r"after t=0\.5: the solution at t=1 is not finite \(a repeat of "
                                             r"the steps checking each one did not fail again"):
        odeint(nan_once, _y0(), torch.tensor([0.0, 0.5, 1.0, 1.5], dtype=F64), method="euler",
               options={"step_size": 0.125})
    assert len(calls) == 2 * 12  # the solve, then its repeat


def test_locating_a_non_finite_step_calls_each_step_callback_once():
    class BlowsUp(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.steps = []

        def forward(self, t, y):
            return torch.where(t > 0.5, torch.full_like(y, float("nan")), -y)

        def callback_step(self, t0, y0, dt):
            self.steps.append(float(t0))

    func = BlowsUp()
    with pytest.warns(UserWarning, match="did not converge"), \
            pytest.raises(NonFiniteError, match=r"after t=0\.5: the step to t=0\.625 produced NaN/inf"):
        odeint(func, _y0(), torch.tensor([0.0, 1.0], dtype=F64), method="implicit_adams",
               options={"step_size": 0.125})
    assert func.steps == [0.125 * k for k in range(8)]


def test_first_bad_step_of_a_tuple_state_with_components_of_different_dtypes_is_found():
    # A float32 and a complex64 component; only the complex one turns NaN, from the euler step
    # starting at 0.25 (f is evaluated at step starts).
    def f(t, y):
        x, z = y
        bad = torch.full_like(z, complex(float("nan"), 0.0))
        return -x, torch.where(t > 0.2, bad, -z)

    with pytest.raises(NonFiniteError, match=r"after t=0\.25: the step to t=0\.5 produced NaN/inf"):
        odeint(f, (torch.ones(3), torch.ones(2, dtype=torch.complex64)), torch.tensor([0.0, 1.0]),
               method="euler", options={"step_size": 0.25})


@pytest.mark.parametrize("step_size", [1e-300, 1e-9])
@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_fixed_grid_beyond_the_step_budget_raises_before_allocating(step_size, method):
    # 1e-300 overflowed the point count; 1e-9 tried to allocate a 1e9-point grid.
    with pytest.raises(ValueError, match="fixed-grid budget"):
        odeint(lambda t, y: -y, torch.ones(3), torch.tensor([0.0, 1.0]), method=method,
               options={"step_size": step_size})


def test_step_size_inf_is_refused():
    with pytest.raises(ValueError, match=r"options\['step_size'\] must be > 0 and finite, got inf"):
        odeint(_decay, _y0(), _t(), method="rk4", options={"step_size": float("inf")})


def test_adaptive_method_refuses_zero_rtol_and_atol_but_fixed_grids_ignore_them():
    with pytest.raises(ValueError, match="rtol and atol cannot both be zero"):
        odeint(_decay, _y0(), _t(), rtol=0.0, atol=0.0)
    odeint(_decay, _y0(), _t(), rtol=0.0, atol=0.0, method="rk4")  # unused there, as torchdiffeq


def test_a_forced_backend_that_cannot_run_here_is_an_error_not_a_fallback():
    import odekern

    if odekern.backends()["cuda"] is True:
        pytest.skip("CUDA is available here")
    with odekern.use_backend("cuda"), pytest.raises(RuntimeError, match="backend 'cuda' was requested"):
        odeint(_decay, torch.ones(300_000, dtype=F64), _t(), method="rk4", options={"step_size": 0.5})


_T0, _T1 = torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64)

# Arguments of the wrong kind that reached Python's own errors deep inside ("'int' object is
# not iterable", "'>=' not supported between instances of 'str' and 'float'", "float()
# argument must be a string or a real number"): each now names the argument.
WRONG_KINDS = {
    "odeint func": (lambda: odeint([1], _y0(), _t()), r"^func must be callable"),
    "odeint_adjoint adjoint_params": (lambda: odeint_adjoint(Decay(), _y0(), _t(), adjoint_params=3),
                                      r"^odeint_adjoint: adjoint_params must be a sequence of tensors, got int"),
    "odeint_adjoint rtol": (lambda: odeint_adjoint(Decay(), _y0(), _t(), rtol="x"),
                            r"^rtol must be a float or a tensor, got str"),
    "odeint_adjoint adjoint_atol": (lambda: odeint_adjoint(Decay(), _y0(), _t(), adjoint_atol={}),
                                    r"^adjoint_atol must be a float or a tensor, got dict"),
    "odeint_adjoint options": (lambda: odeint_adjoint(Decay(), _y0(), _t(), options=[("step_size", 0.1)]),
                               r"^odeint_adjoint: options must be a dict or None, got list"),
    "odeint_adjoint adjoint_options": (lambda: odeint_adjoint(Decay(), _y0(), _t(), adjoint_options="x"),
                                       r"^odeint_adjoint: adjoint_options must be a dict or None, got str"),
    "odeint_dense t0": (lambda: odekern.odeint_dense(_decay, _y0(), "0", _T1),
                        r"^odeint_dense: t0 must be a time \(a number or a one-element tensor\), got str"),
    "odeint_dense t1": (lambda: odekern.odeint_dense(_decay, _y0(), _T0, [1.0]),
                        r"^odeint_dense: t1 must be a time .*got list"),
    "odeint_event t0": (lambda: odekern.odeint_event(_decay, _y0(), (0.0,), event_fn=lambda t, y: y.sum() - 1),
                        r"^odeint_event: t0 must be a time .*got tuple"),
    "odeint options['min_step']": (lambda: odeint(_decay, _y0(), _t(), options={"min_step": None}),
                                   r"^options\['min_step'\] must be a number >= 0, got NoneType"),
    "ODEBlock options": (lambda: odekern.ODEBlock(_decay, options=3),
                         r"^ODEBlock: options must be a dict or None, got int"),
}


@pytest.mark.parametrize("name", sorted(WRONG_KINDS))
def test_an_argument_of_the_wrong_kind_is_named(name):
    call, match = WRONG_KINDS[name]
    with pytest.raises(TypeError, match=match):
        call()


def test_numpy_times_still_reach_odeint_dense_and_odeint_event():
    import numpy as np
    dense = odekern.odeint_dense(_decay, _y0(), np.float64(0.0), np.array(1.0))
    assert_close(dense(torch.tensor(1.0, dtype=F64)), _y0() * math.exp(-1.0), rtol=1e-6, atol=0)
    event_t, _ = odekern.odeint_event(_decay, _y0(), np.float32(0.0), event_fn=lambda t, y: y[0, 0] - 0.5)
    assert abs(float(event_t) - math.log(2.0)) < 1e-6


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "implicit_adams"])
@pytest.mark.parametrize("shape", [(2,), (3, 1), (2, 3, 1)])
def test_a_tolerance_tensor_that_does_not_fit_y0_is_named(method, shape):
    """y0 is 2 x 3. A (2,) rtol failed inside the solve with PyTorch's size message; a (3, 1) or
    (2, 3, 1) one broadcast the error up to 3 x 3 or 2 x 3 x 3, each element measured against
    several tolerances, and gave a result without a word (torchdiffeq does the same)."""
    options = {"step_size": 0.25} if method == "implicit_adams" else None
    with pytest.raises(ValueError, match=rf"^rtol of shape {re.escape(str(shape))} must broadcast to the "
                                         r"shape of y0, \(2, 3\)"):
        odeint(_decay, _y0(), _t(), rtol=torch.full(shape, 1e-6, dtype=F64), method=method, options=options)


def test_tolerance_tensors_that_fit_y0_are_taken():
    exact = _y0() * math.exp(-1.0)
    for shape in [(2, 3), (3,), (2, 1), (1, 3), (1,), ()]:
        out = odeint(_decay, _y0(), _t(), rtol=torch.full(shape, 1e-9, dtype=F64), atol=1e-12)
        assert_close(out[-1], exact, rtol=1e-7, atol=0)
    # Per component of a tuple state: each is checked against its own component.
    pair = (_y0(), torch.ones(4, dtype=F64))
    with pytest.raises(ValueError, match=r"^atol\[1\] of shape \(3,\) must broadcast to the shape of y0\[1\], \(4,\)"):
        odeint(lambda t, y: (-y[0], -y[1]), pair, _t(), atol=(1e-9, torch.full((3,), 1e-9, dtype=F64)))
