"""torchdiffeq drop-in: every option name torchdiffeq 0.2.5 takes, and its warnings for the rest.

Code written for torchdiffeq passes one option dict to several methods (the continuous U-Net's
``options={"max_num_steps": 1000}`` for rk4/euler/Adams) and relies on torchdiffeq warning
"Unexpected arguments" instead of failing. Each case runs on both libraries: the same warnings,
and the same solution (fixed grids to rounding, adaptive methods within ``CROSS_LIBRARY_TOL``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchdiffeq
from solver_problems import Counting, MLPODE

import odekern
from odekern.testing import assert_close, randn

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


STEP = 0.125  # exact in binary: the grid points are exactly the jumps of _jumpy


def _jumpy(t, y):
    """A right-hand side with a jump at every grid point (``floor(t / STEP)``): ``perturb``
    decides which side of it each stage sees."""
    return torch.sin(y) + torch.floor(t / STEP)


def _smooth(t, y):
    return torch.sin(3 * t) * y - 0.5 * y ** 3


def _run(lib, func, method, options, t=None, y0=None, **kw):
    """The solution and the set of warning texts the call raised (not the Adams corrector's
    convergence warnings: their texts differ, see test_adams_corrector_warning_starts_like_torchdiffeqs)."""
    t = torch.tensor([0.0, 0.375, 0.75], dtype=F64) if t is None else t
    y0 = randn(2, 3, dtype=F64, seed=3) if y0 is None else y0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = lib.odeint(func, y0, t, method=method, options=options, **kw)
    return out, {str(w.message) for w in caught if "did not converge" not in str(w.message)}


FIXED = {"euler": None, "midpoint": None, "rk4": None, "heun2": None, "heun3": None,
         "explicit_adams": {"max_order": 4}, "implicit_adams": None}


@pytest.mark.parametrize("method,extra", [
    ("rk4", {"max_num_steps": 1000}), ("euler", {"max_num_steps": 1000}),
    ("implicit_adams", {"max_num_steps": 1000}), ("explicit_adams", {"max_num_steps": 1000, "max_order": 4}),
    ("midpoint", {"first_step": 0.1}), ("dopri5", {"step_size": 0.1, "interp": "cubic"}),
    ("dopri5", {"perturb": True}), ("heun3", {"jump_t": [0.5]}),
], ids=lambda v: v if isinstance(v, str) else "-".join(v))
def test_unexpected_options_warn_like_torchdiffeq(method, extra):
    opts = ({"step_size": 0.05} if method != "dopri5" else {}) | extra
    ours, our_warnings = _run(odekern, _smooth, method, opts)
    theirs, their_warnings = _run(torchdiffeq, _smooth, method, opts)
    assert our_warnings == their_warnings
    unexpected = [w for w in our_warnings if "Unexpected arguments" in w]
    assert len(unexpected) == 1 and all(repr(k) in unexpected[0] for k in extra if k != "max_order"), our_warnings
    assert_close(ours, theirs, kind="cross" if method == "dopri5" else "rounding")


@pytest.mark.parametrize("method", ["rk4", "euler", "implicit_adams", "dopri5"])
def test_options_every_method_takes_silently(method):
    # torchdiffeq takes ``norm`` for every method (fixed grids ignore it); Adams take max_iters.
    opts = {"norm": lambda y: y.abs().max()}
    if method != "dopri5":
        opts |= {"step_size": 0.1, "perturb": False}
    if "adams" in method:
        opts |= {"max_iters": 3, "max_order": 5}
    ours, our_warnings = _run(odekern, _smooth, method, opts)
    theirs, their_warnings = _run(torchdiffeq, _smooth, method, opts)
    assert not our_warnings and not their_warnings
    assert_close(ours, theirs, kind="cross" if method == "dopri5" else "rounding")


@pytest.mark.parametrize("method", list(FIXED))
@pytest.mark.parametrize("perturb", [False, True])
def test_perturb_matches_torchdiffeq_on_a_discontinuous_rhs(method, perturb):
    opts = {"step_size": STEP, "perturb": perturb} | (FIXED[method] or {})
    ours, _ = _run(odekern, _jumpy, method, opts)
    theirs, _ = _run(torchdiffeq, _jumpy, method, opts)
    assert_close(ours, theirs)


def test_perturb_changes_the_solution_of_a_discontinuous_rhs():
    # The option is not a no-op: which side of each jump the stages see moves the result.
    plain, _ = _run(odekern, _jumpy, "rk4", {"step_size": STEP})
    nudged, _ = _run(odekern, _jumpy, "rk4", {"step_size": STEP, "perturb": True})
    assert (plain - nudged).abs().max() > 1e-3


def test_perturb_backward_in_time_matches_torchdiffeq():
    t = torch.tensor([0.75, 0.375, 0.0], dtype=F64)
    ours, _ = _run(odekern, _jumpy, "rk4", {"step_size": STEP, "perturb": True}, t=t)
    theirs, _ = _run(torchdiffeq, _jumpy, "rk4", {"step_size": STEP, "perturb": True}, t=t)
    assert_close(ours, theirs)


def test_implicit_adams_implicit_false_is_explicit_adams():
    opts = {"step_size": 0.1, "max_order": 4}
    ours, _ = _run(odekern, _smooth, "implicit_adams", opts | {"implicit": False})
    theirs, _ = _run(torchdiffeq, _smooth, "implicit_adams", opts | {"implicit": False})
    explicit, _ = _run(odekern, _smooth, "explicit_adams", opts)
    assert_close(ours, theirs)
    assert_close(ours, explicit)


@pytest.mark.parametrize("method", ["implicit_adams", "fixed_adams"])
def test_adams_corrector_warning_starts_like_torchdiffeqs(method):
    # Filters written for torchdiffeq's text match odekern's (which adds why, naming the method
    # the user asked for). Every step that does not converge warns with the same text, so
    # Python's default filter shows it once, as it shows torchdiffeq's.
    with pytest.warns(UserWarning, match=r"^Functional iteration did not converge\. Solution may be incorrect\. "
                                         rf"\({method}: the corrector did not converge in 1 iteration at") as caught:
        odekern.odeint(_smooth, randn(2, 3, dtype=F64, seed=3), torch.tensor([0.0, 1.0], dtype=F64),
                       method=method, options={"step_size": 0.1, "max_iters": 1})
    texts = [str(w.message) for w in caught if "did not converge" in str(w.message)]
    assert len(texts) > 1 and len(set(texts)) == 1, texts


@pytest.mark.parametrize("max_order", [2, 3])
def test_adams_low_max_order_warning_starts_like_torchdiffeqs(max_order):
    # Below order 4 both libraries take RK4 (3/8 rule) steps, and say so in the same words.
    opts = {"step_size": 0.1, "max_order": max_order}
    ours, our_warnings = _run(odekern, _smooth, "implicit_adams", opts)
    theirs, their_warnings = _run(torchdiffeq, _smooth, "implicit_adams", opts)
    assert their_warnings == {"max_order is below 4, so the solver reduces to `rk4`."}
    assert len(our_warnings) == 1 and next(iter(our_warnings)).startswith(next(iter(their_warnings)))
    assert_close(ours, theirs)


def test_explicit_adams_refuses_implicit_with_torchdiffeqs_exception_type():
    opts = {"step_size": 0.1, "implicit": True}
    with pytest.raises(TypeError):
        _run(torchdiffeq, _smooth, "explicit_adams", opts)
    with pytest.raises(TypeError, match=r"options\['implicit'\] cannot be given to method 'explicit_adams'"):
        _run(odekern, _smooth, "explicit_adams", opts)


@pytest.mark.parametrize("time_dtype", [torch.float32, torch.float64])
def test_adaptive_time_dtype_option(time_dtype):
    """``dtype`` is the dtype time is held in (promoted with the state's): both libraries take the
    same steps."""
    y0 = randn(2, 3, dtype=F64, seed=3)
    f_ours, f_theirs = Counting(_smooth), Counting(_smooth)
    ours, w = _run(odekern, f_ours, "dopri5", {"dtype": time_dtype}, y0=y0)
    theirs, _ = _run(torchdiffeq, f_theirs, "dopri5", {"dtype": time_dtype}, y0=y0)
    assert not w
    assert_close(ours, theirs, kind="cross")
    assert abs(f_ours.n - f_theirs.n) <= 6


def test_adaptive_time_dtype_must_be_a_floating_dtype():
    with pytest.raises(TypeError, match=r"options\['dtype'\] must be a floating torch.dtype"):
        odekern.odeint(_smooth, torch.ones(2), torch.tensor([0.0, 1.0]), options={"dtype": torch.int32})


def test_on_max_steps_is_accepted_by_fixed_grids():
    # odekern's own option: a status-returning call keeps its return type when the method changes.
    sol, status = odekern.odeint(_smooth, torch.ones(2), torch.tensor([0.0, 1.0]), method="rk4",
                                 options={"step_size": 0.1, "on_max_steps": "return"})
    assert status.success and status.n_steps == 10 and sol.shape == (2, 2)


def test_fixed_grid_event_needs_step_size_with_torchdiffeqs_exception_type():
    args = (lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]))
    with pytest.raises(AssertionError):
        torchdiffeq.odeint(*args, method="rk4", event_fn=lambda t, y: y - 0.5)
    with pytest.raises(AssertionError, match=r"needs options\['step_size'\]"):
        odekern.odeint(*args, method="rk4", event_fn=lambda t, y: y - 0.5)
    with pytest.raises(ValueError, match=r"needs options\['step_size'\]"):
        odekern.odeint(*args, method="rk4", event_fn=lambda t, y: y - 0.5)


def _seminorm_case(lib, adjoint_options):
    func = MLPODE(3, seed=2)
    counting = Counting(func)
    y0 = randn(4, 3, dtype=F64, seed=5).requires_grad_(True)
    t = torch.tensor([0.0, 0.5, 1.5], dtype=F64)
    ys = lib.odeint_adjoint(counting, y0, t, rtol=1e-9, atol=1e-11, adjoint_params=tuple(func.parameters()),
                            adjoint_options=adjoint_options)
    n_forward = counting.n
    grads = torch.autograd.grad((ys ** 2).sum(), (y0, *func.parameters()))
    return grads, counting.n - n_forward


def test_adjoint_seminorm_matches_torchdiffeq_and_saves_backward_steps():
    ours, our_nfe = _seminorm_case(odekern, {"norm": "seminorm"})
    theirs, their_nfe = _seminorm_case(torchdiffeq, {"norm": "seminorm"})
    _, full_nfe = _seminorm_case(odekern, None)
    for a, b in zip(ours, theirs):
        assert_close(a, b, kind="cross")
    assert abs(our_nfe - their_nfe) <= 6  # one dopri5 step
    assert our_nfe < full_nfe


@pytest.mark.parametrize("t0,t1", [(0.3, 0.9), (0.9, 0.3), (0.0, 0.7)])
def test_step_size_grid_that_rounds_past_its_end_runs_like_torchdiffeq(t0, t1):
    # 0.3 + 6 * 0.1 > 0.9 in float64: the grid's last two points would be out of order.
    t = torch.tensor([t0, t1], dtype=F64)
    ours, _ = _run(odekern, _smooth, "rk4", {"step_size": 0.1}, t=t)
    theirs, _ = _run(torchdiffeq, _smooth, "rk4", {"step_size": 0.1}, t=t)
    assert_close(ours, theirs)


def test_perturb_in_gradient_mode_checkpoint_equals_backprop():
    class JumpyMLP(MLPODE):
        def forward(self, t, y):
            return super().forward(t, y) + torch.floor(t / STEP)

    func = JumpyMLP(3, seed=2)
    grads = []
    for gradient in ("backprop", "checkpoint"):
        block = odekern.ODEBlock(func, t=(0.0, 0.75), method="rk4", step_size=STEP, gradient=gradient,
                                 options={"perturb": True}, checkpoints=2)
        x = randn(2, 3, dtype=F64, seed=4).requires_grad_(True)
        out = block(x)
        grads.append((out, *torch.autograd.grad(out.sum(), (x, *func.parameters()))))
    for a, b in zip(*grads):
        assert_close(a, b)


NUMPY_CASES = {
    "tolerances": (dict(rtol=np.float32(1e-5), atol=np.float64(1e-8)),
                   dict(rtol=float(np.float32(1e-5)), atol=1e-8)),
    "per-component-rtol": (dict(rtol=np.array([1e-5, 1e-6, 1e-7]), atol=np.array(1e-9)),
                           dict(rtol=torch.tensor([1e-5, 1e-6, 1e-7], dtype=F64), atol=1e-9)),
    "step-size": (dict(method="rk4", options=dict(step_size=np.float32(0.1))),
                  dict(method="rk4", options=dict(step_size=float(np.float32(0.1))))),
    "step-options": (dict(options=dict(max_num_steps=np.int64(1000), first_step=np.float64(0.01),
                                       max_step=np.float32(0.5))),
                     dict(options=dict(max_num_steps=1000, first_step=0.01, max_step=0.5))),
}


@pytest.mark.parametrize("case", NUMPY_CASES)
def test_numpy_tolerances_and_options_act_as_their_numbers(case):
    """torchdiffeq takes NumPy scalars and arrays as tolerances and options (through tensor
    arithmetic); odekern refused them with a TypeError. Now the same solution as with the Python
    numbers (bit for bit), and torchdiffeq's to its tolerance."""
    numpy_kw, plain_kw = NUMPY_CASES[case]
    func, y0, t = MLPODE(3, seed=2), randn(2, 3, dtype=F64, seed=4), torch.tensor([0.0, 0.7, 1.2], dtype=F64)
    ours = odekern.odeint(func, y0, t, **numpy_kw)
    torch.testing.assert_close(ours, odekern.odeint(func, y0, t, **plain_kw), rtol=0, atol=0)
    assert_close(ours, torchdiffeq.odeint(func, y0, t, **numpy_kw), "cross")


def test_numpy_values_reach_odeint_adjoint_odeint_dense_and_ode_block():
    func, t = MLPODE(3, seed=2), torch.tensor([0.0, 1.0], dtype=F64)

    def grads(**kw):
        y0 = randn(2, 3, dtype=F64, seed=4).requires_grad_(True)
        odekern.odeint_adjoint(func, y0, t, **kw).sum().backward()
        return y0.grad

    torch.testing.assert_close(
        grads(rtol=np.float32(1e-6), adjoint_rtol=np.float32(1e-6), adjoint_options=dict(max_num_steps=np.int64(500))),
        grads(rtol=float(np.float32(1e-6)), adjoint_rtol=float(np.float32(1e-6)), adjoint_options=dict(max_num_steps=500)),
        rtol=0, atol=0)
    y0 = randn(2, 3, dtype=F64, seed=4)
    dense = odekern.odeint_dense(func, y0, 0.0, 1.0, rtol=np.float32(1e-6), atol=np.float64(1e-9))
    plain = odekern.odeint_dense(func, y0, 0.0, 1.0, rtol=float(np.float32(1e-6)), atol=1e-9)
    torch.testing.assert_close(dense(torch.tensor(0.3, dtype=F64)), plain(torch.tensor(0.3, dtype=F64)), rtol=0, atol=0)
    block = odekern.ODEBlock(func, step_size=np.float32(0.25), rtol=np.float32(1e-5))
    torch.testing.assert_close(block(y0), odekern.ODEBlock(func, step_size=0.25)(y0), rtol=0, atol=0)


def _kinked(t, y):
    return -y * (1 + (t > 0.5).to(y.dtype))


@pytest.mark.parametrize("name", ["jump_t", "step_t"])
def test_one_time_given_as_a_number_is_taken_like_torchdiffeq(name):
    y0, t = torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    ours = odekern.odeint(_kinked, y0, t, options={name: 0.5})
    torch.testing.assert_close(ours, odekern.odeint(_kinked, y0, t, options={name: [0.5]}), rtol=0, atol=0)
    assert_close(ours, torchdiffeq.odeint(_kinked, y0, t, options={name: 0.5}), "cross")
    # Any iterable of times, a generator too (the type check must not use it up).
    torch.testing.assert_close(odekern.odeint(_kinked, y0, t, options={name: (v for v in [0.5])}), ours,
                               rtol=0, atol=0)


@pytest.mark.parametrize("value", ["0.5", ["0.5"], [True], object()])
def test_times_that_are_not_numbers_are_refused_naming_the_option(value):
    with pytest.raises(TypeError, match=r"options\['jump_t'\] must be a time, or a 1-D tensor or sequence"):
        odekern.odeint(_kinked, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                       options={"jump_t": value})


@pytest.mark.parametrize("name", ["jump_t", "step_t"])
@pytest.mark.parametrize("value", [float("nan"), [0.2, float("nan")], torch.tensor([float("nan"), 0.5])])
def test_a_nan_time_is_refused_naming_the_option(name, value):
    # It was skipped without a word: a time the user meant to step onto was never stepped onto.
    with pytest.raises(ValueError, match=rf"options\['{name}'\] must not contain NaN"):
        odekern.odeint(_kinked, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                       options={name: value})


def _cos_decay(t, y):
    return -y * torch.cos(t)


@pytest.mark.parametrize("method", ["euler", "rk4", "explicit_adams", "implicit_adams"])
def test_a_grid_with_repeated_points_solves_like_torchdiffeq(method):
    """A repeated grid point is a step of length 0: torchdiffeq takes it; it was refused here."""
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    options = {"grid_constructor": lambda f, y, tt: torch.tensor([0, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0], dtype=F64)}
    ours, theirs = (lib.odeint(_cos_decay, y0, t, method=method, options=options) for lib in (odekern, torchdiffeq))
    assert_close(ours, theirs)
    assert_close(*(torch.autograd.grad(ys.sum(), y0)[0] for ys in (ours, theirs)))


GRID_MISTAKES = [  # (grid, exception types torchdiffeq's caller may catch, message)
    (torch.linspace(0.1, 1.0, 10, dtype=F64), (AssertionError, ValueError), r"must start at t\[0\]=0.0 and end at"),
    (torch.tensor([0.0], dtype=F64), (AssertionError, ValueError), r"1-D tensor of at least 2 times, got shape \(1,\)"),
    ([0.0, 1.0], (TypeError,), r"must return a 1-D tensor of times, got list"),
    (torch.tensor([0.0, 0.6, 0.3, 1.0], dtype=F64), (ValueError,), r"must be monotonic"),
    (torch.tensor([0.0, float("nan"), 1.0], dtype=F64), (ValueError,), r"must be monotonic .*free of NaN"),
]


@pytest.mark.parametrize("grid, types, match", GRID_MISTAKES, ids=["ends", "one-point", "list", "unsorted", "nan"])
def test_grid_constructor_mistakes_raise_torchdiffeqs_types_or_clearer_ones(grid, types, match):
    """Ends that miss t and a one-point grid fail torchdiffeq's assert (both types here); an
    unsorted or NaN grid, which torchdiffeq integrates into garbage or NaN, is refused."""
    for exc in types:
        with pytest.raises(exc, match=match):
            odekern.odeint(_cos_decay, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method="rk4",
                           options={"grid_constructor": lambda f, y, tt: grid})
