"""Input validation shared by ``odeint``, ``odeint_adjoint`` and ``ODEBlock``.

Every function raises a ``TypeError`` (wrong kind of object) or ``ValueError`` (right kind, bad
value) whose message starts with the argument's name and says what was expected.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from odekern._choices import is_choice
from odekern.solvers.compat import solver_class_name
from odekern.solvers.state import (
    all_finite,
    assert_finite_traced,
    component,
    components,
    is_tuple,
    real_dtype,
)

Tensor = torch.Tensor


class AssertedValueError(ValueError, AssertionError):
    """A bad argument value that torchdiffeq reports with ``assert``: a ``ValueError`` here (the
    argument is wrong), and an ``AssertionError`` too, so code that catches torchdiffeq's
    exception keeps working."""


class AssertedTypeError(TypeError, AssertionError):
    """A wrong kind of argument (``t`` or ``y0`` not a tensor) that torchdiffeq reports with
    ``assert``: a ``TypeError`` here, and an ``AssertionError`` too, as ``AssertedValueError``."""


class SolveError(RuntimeError, AssertionError):
    """A solve that cannot reach its end: the step budget (``max_num_steps``) ran out, or the step
    size underflowed.

    torchdiffeq stops these solves with ``assert`` (``max_num_steps exceeded``, ``underflow in
    dt``), so training loops that skip a failed solve catch ``AssertionError``; this is one too,
    and a ``RuntimeError`` (the run failed, no argument was wrong)."""


def shape_or_type(value: Any) -> Any:
    """What an error message reports for a value that should have been a tensor of some shape."""
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


def _fmt_list(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in sorted(names))


def check_time(t: Any, name: str = "t") -> bool:
    """``t`` must be a 1-D, finite, floating tensor, strictly increasing or decreasing.

    Returns True when ``t`` is decreasing (the solve runs backward in time).
    """
    if not isinstance(t, Tensor):
        raise AssertedTypeError(f"{name} must be a torch.Tensor of time points, got {type(t).__name__}")
    if not torch.is_floating_point(t):
        raise TypeError(f"{name} must be a floating point tensor, got dtype {t.dtype}")
    if t.dim() != 1:
        raise AssertedValueError(f"{name} must be 1-D (a sequence of time points), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} must contain at least one time point, got an empty tensor")
    if t.numel() <= _TIME_VALUES_READ and not torch.compiler.is_compiling():
        # A handful of times is checked faster as Python floats (one read) than by tensor ops.
        values = t.detach().tolist()
        if not all(map(math.isfinite, values)):
            raise AssertedValueError(f"{name} must be finite, got {values}")
        return _check_time_order(values, name)
    if not bool(torch.isfinite(t).all()):
        raise AssertedValueError(f"{name} must be finite, got {t.tolist()}")
    if t.numel() < 2:
        return False
    diff = t[1:] - t[:-1]
    if bool((diff > 0).all()):
        return False
    if bool((diff < 0).all()):
        return True
    bad = int(torch.nonzero(diff * diff[0] <= 0)[0])
    raise AssertedValueError(f"{name} must be strictly increasing or strictly decreasing, but {name}[{bad}]="
                     f"{t[bad].item()} and {name}[{bad + 1}]={t[bad + 1].item()} break the order")


# Up to this many output times, check_time reads them once and checks them in Python.
_TIME_VALUES_READ = 1024


def _check_time_order(values: list[float], name: str) -> bool:
    """Times must be strictly monotonic; True when they decrease."""
    if len(values) < 2:
        return False
    increasing = values[1] > values[0]
    for i in range(len(values) - 1):
        a, b = values[i], values[i + 1]
        if not (b > a if increasing else b < a):
            raise AssertedValueError(f"{name} must be strictly increasing or strictly decreasing, but {name}[{i}]="
                                     f"{a} and {name}[{i + 1}]={b} break the order")
    return not increasing


def check_state(y0: Any, name: str = "y0", *, finite: bool = True) -> None:
    """``y0`` must be a finite floating point tensor (or a non-empty tuple of them).

    ``finite=False`` checks the type only, for a caller whose own solve checks the values (the
    check reads the tensor: a pass over it, and a device sync on a GPU)."""
    if isinstance(y0, tuple):
        if len(y0) == 0:
            raise ValueError(f"{name} must be a tensor or a non-empty tuple of tensors, got an empty tuple")
        for i, part in enumerate(y0):
            check_state(part, f"{name}[{i}]", finite=finite)
        dtypes = {p.dtype for p in y0}
        devices = {p.device for p in y0}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(f"{name}: all tensors of a tuple state must share dtype and device, got "
                             f"dtypes {sorted(map(str, dtypes))} and devices {sorted(map(str, devices))}")
        return
    if not isinstance(y0, Tensor):
        raise AssertedTypeError(f"{name} must be a torch.Tensor or a tuple of tensors, got {type(y0).__name__}")
    if not (torch.is_floating_point(y0) or y0.is_complex()):
        raise TypeError(f"{name} must be a floating point tensor (float16/bfloat16/float32/float64) or a "
                        "complex one (complex64/complex128), "
                        f"got dtype {y0.dtype}")
    if not finite:
        return
    if torch.compiler.is_compiling():
        assert_finite_traced(y0, f"{name} must be finite, but it contains NaN or inf")
    elif not all_finite(y0):
        raise ValueError(f"{name} must be finite, but it contains NaN or inf")


def check_state_matches_time(y0: Tensor | Sequence[Tensor], t: Tensor,
                             y0_name: str = "y0", t_name: str = "t") -> None:
    """``y0`` and ``t`` must share the device (``coerce_time`` moves ``t`` instead, with a warning)."""
    ref = y0[0] if isinstance(y0, tuple) else y0
    if ref.device != t.device:
        raise ValueError(f"{y0_name} and {t_name} must be on the same device, got {y0_name} on {ref.device} "
                         f"and {t_name} on {t.device}")


def coerce_time(t: Tensor, y0: Tensor | Sequence[Tensor]) -> Tensor:
    """``t`` on ``y0``'s device, as torchdiffeq does: moved with its warning, never refused.

    The dtype is left alone: a fixed grid keeps ``t``'s precision for its step sizes, an adaptive
    solver holds time in float64, ``func`` receives time in the state's dtype and the solution
    has the state's dtype (torchdiffeq's rules, so a float64 NumPy time grid with a float32 state
    gives what it gives there)."""
    ref = y0[0] if isinstance(y0, tuple) else y0
    if t.device != ref.device:
        warnings.warn("t is not on the same device as y0. Coercing to y0.device.")
        t = t.to(ref.device)
    return t


def time_argument(t: Any, y0: Tensor | Sequence[Tensor]) -> tuple[Tensor, list[float] | None, bool]:
    """The output times as every solve entry point takes them: a 1-D tensor (checked, on
    ``y0``'s device by ``coerce_time``) or a list / tuple of Python numbers (made a tensor of
    ``y0``'s real dtype on its device). Returns ``(t, t_values, reverse)``: ``t_values`` the times
    as Python floats when given so (fixed grids then read no tensor: torch.compile traces the
    whole solve), else None; ``reverse``: the times decrease."""
    if isinstance(t, (list, tuple)):
        reverse = check_time_values(t)
        t_values = [float(v) for v in t]
        like = y0[0] if isinstance(y0, tuple) else y0
        return torch.tensor(t_values, dtype=real_dtype(like.dtype), device=like.device), t_values, reverse
    reverse = check_time(t)
    return coerce_time(t, y0), None, reverse


def tensor_tuple(values: Iterable[Any], name: str) -> tuple[Tensor, ...]:
    """``values`` (a sequence or a generator) as a tuple of tensors, or a TypeError naming the
    first entry that is not one (``name`` is how the caller spells the argument)."""
    try:
        values = tuple(values)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of tensors, got {type(values).__name__}") from None
    for i, value in enumerate(values):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(value).__name__}")
    return values


def check_params(params: Iterable[Tensor], y0: Tensor, name: str = "params") -> None:
    """Floating parameters of the RHS must share ``y0``'s dtype and device."""
    for i, p in enumerate(params):
        if not torch.is_floating_point(p):
            continue
        if p.device != y0.device:
            raise ValueError(f"{name}[{i}] is on {p.device} but y0 is on {y0.device}; "
                             "the ODE's parameters and state must be on the same device")
        if p.dtype not in (y0.dtype, real_dtype(y0.dtype)):  # real parameters of a complex ODE are fine
            raise TypeError(f"{name}[{i}] has dtype {p.dtype} but y0 has dtype {y0.dtype}; "
                            "the ODE's parameters and state must share a dtype")


def from_numpy(value: Any) -> Any:
    """A NumPy value as the Python number or tensor odekern takes in its place: a NumPy scalar or
    0-d array becomes its Python number (exactly), another array a tensor; anything else is
    returned as is. torchdiffeq takes NumPy tolerances and options through tensor arithmetic, so
    a drop-in must too, and converting once at the entry spares every later check and branch a
    third kind of number."""
    if type(value).__module__ != "numpy":  # no NumPy import for the common case
        return value
    if getattr(value, "ndim", None) == 0:
        return value.item()
    return torch.as_tensor(value) if hasattr(value, "__array__") else value


def check_mapping(value: Any, name: str) -> None:
    """An options dict (any mapping) or None."""
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict or None, got {type(value).__name__}")


def check_time_scalar(value: Any, name: str) -> None:
    """One finite time: a real number (NumPy's taken through ``from_numpy`` first) or a
    one-element tensor (read once, to check it is finite)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a single time, got a tensor of shape {tuple(value.shape)}")
        if torch.compiler.is_compiling():
            return
        value = value.item()
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a time (a number or a one-element tensor), got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")


def options_from_numpy(options: Any) -> Any:
    """``options`` with its NumPy values converted by ``from_numpy`` (a new dict; anything that
    is not a Mapping is returned for check_options to refuse)."""
    if not isinstance(options, Mapping):
        return options
    return {k: from_numpy(v) for k, v in options.items()}


def check_tolerance(value: Any, name: str) -> None:
    """``rtol`` / ``atol``: a non-negative float or tensor that does not require grad."""
    if isinstance(value, Tensor):
        if value.requires_grad:
            raise AssertedValueError(f"{name} must not require grad")
        if not bool((value >= 0).all()) or not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} must be finite and >= 0, got {value.tolist()}")
        return
    if isinstance(value, (tuple, list)):
        for v in value:
            check_tolerance(v, name)
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be finite and >= 0, got {value}")


def check_tolerance_fits(value: Any, y0: Any, name: str, y0_name: str = "y0") -> None:
    """A tolerance tensor must broadcast to its state's shape without enlarging it. One of
    another shape (``rtol`` of shape (2,) for a ``y0`` of shape (1,)) would broadcast the error
    up, measuring each element against several tolerances, or fail inside the solve with
    PyTorch's size message. A per-component tuple is checked component by component."""
    if isinstance(value, (tuple, list)):
        if is_tuple(y0) and len(value) == len(y0):
            for i, (v, part) in enumerate(zip(value, y0)):
                check_tolerance_fits(v, part, f"{name}[{i}]", f"{y0_name}[{i}]")
        return
    if not isinstance(value, Tensor) or value.numel() == 1 or is_tuple(y0):
        return
    try:
        fits = torch.broadcast_shapes(value.shape, y0.shape) == y0.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"{name} of shape {tuple(value.shape)} must broadcast to the shape of {y0_name}, "
                         f"{tuple(y0.shape)} (one tolerance per element, or a shape that broadcasts to it)")


def check_tolerances_not_both_zero(rtol: Any, atol: Any, method: str) -> None:
    """An adaptive method with rtol = atol = 0 would shrink its step to nothing."""
    def zero(v: Any) -> bool:
        if isinstance(v, (tuple, list)):
            return all(zero(x) for x in v)
        return bool((v == 0).all()) if isinstance(v, Tensor) else v == 0
    if zero(rtol) and zero(atol):
        raise ValueError(f"rtol and atol cannot both be zero for the adaptive method {method!r}: no step "
                         "would meet that tolerance; set one of them > 0")


def resolvable_tolerance(dtype: torch.dtype) -> float:
    """The smallest relative tolerance an adaptive solve of a ``dtype`` state is allowed: (8 u)^2,
    u = the dtype's unit roundoff (bfloat16 9.8e-4, float16 1.5e-5, float32 2.3e-13).

    The error estimate of a step carries rounding noise of about u dt |f|, so the steps that pass
    a relative tolerance ``tol`` move y by about tol / u relative. Below u^2 that is less than
    y's own rounding: steps leave y unchanged, pass with a zero error estimate, and the solve
    returns (nearly) y0 at the end time. Between u^2 and about 64 u^2 the many tiny steps each
    round y and the result is still wrong by 10-100% (measured with every adaptive method on
    bfloat16 and float16 states; at 64 u^2 the error is 2-27 times the dtype's eps)."""
    u = torch.finfo(real_dtype(dtype)).eps / 2
    return (8 * u) ** 2


def check_tolerance_resolvable(rtol: Any, atol: Any, y0: Any, method: str,
                               names: tuple[str, str] = ("rtol", "atol")) -> None:
    """An adaptive method's tolerance must be resolvable by the state's dtype: for every element,
    ``rtol + atol / |y0|`` >= ``resolvable_tolerance(dtype)`` (elements where y0 is 0 always are).
    A float ``rtol`` at or above that bound is accepted without reading the state."""
    parts = components(y0)
    if any(isinstance(v, (tuple, list)) and (not is_tuple(y0) or len(v) != len(parts)) for v in (rtol, atol)):
        return  # per-component tolerances that do not fit y0 are rejected where they are applied
    for i, part in enumerate(parts):
        if not isinstance(part, Tensor) or part.numel() == 0:
            continue
        r, a = component(rtol, i), component(atol, i)
        floor = resolvable_tolerance(part.dtype)
        if not isinstance(r, Tensor) and r >= floor:
            continue
        size = part.detach().abs().to(torch.float64)
        as64 = lambda v: v.detach().to(size.device, torch.float64) if isinstance(v, Tensor) else v  # noqa: E731
        try:
            relative = as64(r) + as64(a) / size
        except RuntimeError:
            continue  # tolerances that do not broadcast to y0 are rejected where they are applied
        # 0 / 0 where y0 and atol are both 0: that element has no bound to break (and a NaN would
        # hide the others from min()).
        worst = float(torch.nan_to_num(relative, nan=math.inf).min())
        if worst < floor:
            dtype = str(part.dtype).removeprefix("torch.")
            where = f" (component {i} of the tuple y0)" if is_tuple(y0) else ""
            raise ValueError(
                f"{names[0]}={_tolerance_text(r)} with {names[1]}={_tolerance_text(a)} asks the adaptive method "
                f"{method!r} for more accuracy than a {dtype} state{where} can hold: steps that "
                f"meet it change y by less than its rounding, so the solve would stall and return a wrong "
                f"result. Need {names[0]} + {names[1]} / |y0| >= {floor:.2g} for {dtype} "
                f"(here {worst:.2g}); loosen the tolerances or solve in a wider dtype (e.g. y0.float())")


def _tolerance_text(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else f"tensor of shape {tuple(v.shape)}"


def time_points(values: Any, name: str) -> list[float]:
    """``options[name]`` (``step_t`` / ``jump_t``: a tensor or a sequence of numbers, or None) as
    sorted Python floats, read in full precision (a list through torch.as_tensor would be
    rounded to float32)."""
    if values is None:
        return []
    if isinstance(values, numbers.Real) and not isinstance(values, bool):
        values = [values]  # one time, as torchdiffeq takes it
    if isinstance(values, Tensor):
        values = values.reshape(-1).tolist()
    try:
        if isinstance(values, (str, bytes)):
            raise TypeError
        values = list(values)  # once: a generator would be used up by the check below
        if any(isinstance(v, (bool, str, bytes)) for v in values):
            raise TypeError
        times = [float(v) for v in values]
    except TypeError:
        raise TypeError(f"options['{name}'] must be a time, or a 1-D tensor or sequence of times") from None
    if any(math.isnan(v) for v in times):  # sorted() would place it anywhere; the solve would skip it
        raise ValueError(f"options['{name}'] must not contain NaN, got {times}")
    return sorted(times)


def check_time_values(values: Sequence[float], name: str = "t") -> bool:
    """``check_time`` for times given as Python numbers (no tensor read: torch.compile traces
    through). Returns True when they decrease."""
    if len(values) == 0:
        raise ValueError(f"{name} must contain at least one time point, got an empty sequence")
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be finite real numbers, got {list(values)}")
    return _check_time_order(list(values), name)


def check_method(method: str | None, valid: Iterable[str], default: str = "dopri5", name: str = "method") -> str:
    """The solver name (``None`` means ``default``); unknown names list the valid ones."""
    if method is None:
        return default
    valid = list(valid)
    if not is_choice(method, valid):
        raise ValueError(f"{name} {method!r} is not a known solver; valid methods: {_fmt_list(valid)}")
    return method


def check_options(method: str, options: Mapping[str, Any] | None, valid: Iterable[str]) -> dict:
    """A copy of ``options`` without the names ``method`` does not take.

    Those are dropped with torchdiffeq's warning (``"RK4: Unexpected arguments {...}"``), so code
    that passes one option dict to every method (e.g. ``max_num_steps`` to ``rk4``) runs as it
    does on torchdiffeq. A value a method cannot use still raises where the solver checks it."""
    check_mapping(options, "options")
    if options is None:
        return {}
    valid = set(valid)
    unknown = {k: v for k, v in options.items() if k not in valid}
    if unknown:
        warnings.warn(f"{solver_class_name(method)}: Unexpected arguments {unknown}")
    return {k: v for k, v in options.items() if k in valid}


ON_MAX_STEPS = ("raise", "return")


def check_on_max_steps(value: Any) -> None:
    if value not in ON_MAX_STEPS:
        raise ValueError(f"options['on_max_steps'] must be one of {list(ON_MAX_STEPS)}, got {value!r}")


def _read_number(value: Any) -> Any:
    """A one-element tensor as its Python number; anything else as it is."""
    return value.item() if isinstance(value, Tensor) and value.numel() == 1 else value


def check_positive(value: Any, name: str, allow_none: bool = True) -> Any:
    """A strictly positive finite number (``step_size``, ``first_step``, ``max_step``...),
    returned as a Python number (a one-element tensor read)."""
    if value is None and allow_none:
        return None
    v = _read_number(value)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"options['{name}'] must be a positive number, got {type(value).__name__}")
    if not (v > 0 and math.isfinite(v)) and not (name == "max_step" and v == math.inf):
        # torchdiffeq's adaptive solve stops a first_step or max_step <= 0 with its step-size
        # assert.
        error = AssertedValueError if name in ("first_step", "max_step") else ValueError
        raise error(f"options['{name}'] must be > 0 and finite, got {v}")
    return v


def check_step_bounds(min_step: Any, max_step: Any) -> tuple[float, float]:
    """``options['min_step']`` and ``['max_step']`` as floats (one-element tensors read)."""
    m = _read_number(min_step)
    if isinstance(m, bool) or not isinstance(m, (int, float)):
        raise TypeError(f"options['min_step'] must be a number >= 0, got {type(min_step).__name__}")
    if not m >= 0:
        raise ValueError(f"options['min_step'] must be a number >= 0, got {m!r}")
    min_step, max_step = float(m), float(check_positive(max_step, "max_step", allow_none=False))
    if min_step > max_step:
        raise ValueError(f"options['min_step'] ({min_step}) must not exceed options['max_step'] ({max_step})")
    return min_step, max_step


def check_rhs_output(out: Any, y: Tensor, t: Any) -> None:
    """The RHS must return a tensor with the state's shape, dtype and device."""
    if not isinstance(out, Tensor):
        raise TypeError(f"func(t, y) must return a torch.Tensor (dy/dt), got {type(out).__name__} at t={_t(t)}")
    if out.shape != y.shape:
        raise ValueError(f"func(t, y) returned shape {tuple(out.shape)} but the state y has shape "
                         f"{tuple(y.shape)}; dy/dt must have the same shape as y")
    _check_dtype_and_device(out, y)


def _check_dtype_and_device(out: Tensor, y: Tensor, index: int | None = None) -> None:
    """dy/dt (component ``index`` of a tuple state) has the state's dtype and device; the names
    are formatted only on failure (this runs on every RHS call)."""
    if out.dtype == y.dtype and out.device == y.device:
        return
    if out.device == y.device and castable_to_state(out, y):
        return  # RHS.__call__ casts it once
    out_name, y_name = ("func(t, y)", "the state y") if index is None else (f"func(t, y)[{index}]", f"y0[{index}]")
    if out.dtype != y.dtype:
        raise TypeError(f"{out_name} returned dtype {out.dtype} but {y_name} has dtype {y.dtype}; a complex "
                        "dy/dt needs a complex state (its imaginary part would be dropped)")
    raise ValueError(f"{out_name} returned a tensor on {out.device} but {y_name} is on {y.device}")


def castable_to_state(out: Tensor, y: Tensor) -> bool:
    """Whether a dy/dt of another dtype is cast to the state's: any real one (bfloat16 from an RHS
    under autocast, float64 from a float64 buffer in the RHS of a float32 state, integers), as
    torchdiffeq's arithmetic takes them, so the state keeps its own precision. Not a complex
    dy/dt for a real state, whose imaginary part the cast would drop silently."""
    return not out.is_complex() or y.is_complex()


def check_tuple_rhs_output(out: Any, y: tuple, t: Any) -> None:
    """For a tuple state the RHS must return a tuple of tensors shaped like the state's components."""
    if not isinstance(out, tuple) or len(out) != len(y):
        raise TypeError(f"func(t, y) must return a tuple of {len(y)} tensors for a tuple state y0, "
                        f"got {type(out).__name__} at t={_t(t)}")
    for i, (d, c) in enumerate(zip(out, y)):
        if not isinstance(d, Tensor) or d.shape != c.shape:
            raise ValueError(f"func(t, y)[{i}] must have shape {tuple(c.shape)} like y0[{i}], "
                             f"got {shape_or_type(d)}")
        _check_dtype_and_device(d, c, i)


def _t(t: Any) -> str:
    return f"{t.item():.6g}" if isinstance(t, Tensor) and t.numel() == 1 else str(t)


def zero_error_scale(method: str, t: float) -> AssertedValueError:
    """The error for a zero error scale (atol = 0 where the state is 0): every error ratio there
    is 0/0, an argument error rather than a stiff problem (torchdiffeq stops with a zero step,
    SciPy's solve_ivp can loop forever)."""
    return AssertedValueError(
        f"odeint(method={method!r}): at t={t:.6g} a component of the state y is 0 where atol is 0, so its error "
        "scale atol + rtol * |y| is 0 and no step can meet the tolerance; set atol > 0 (e.g. 1e-9), "
        "or adjoint_atol > 0 for odeint_adjoint, whose backward state starts with zero gradients")


class NonFiniteError(SolveError, FloatingPointError):
    """The solution became NaN or inf during the solve (message names the time reached).

    A ``SolveError`` (so also a ``RuntimeError`` and an ``AssertionError``: torchdiffeq's adaptive
    solvers stop a NaN solution with ``underflow in dt nan``, an assert)."""


def raise_non_finite(method: str, t_reached: float, detail: str) -> None:
    raise NonFiniteError(f"odeint(method={method!r}): the solution became non-finite (NaN or inf) "
                         f"after t={t_reached:.6g}: {detail}")


_UNSTABLE_HINT = "the ODE may be unstable at this step size (try a smaller step_size)"


def raise_non_finite_step(method: str, t0: float, t1: float) -> None:
    """The fixed-grid step from ``t0`` to ``t1`` (the caller's times) produced NaN/inf."""
    raise_non_finite(method, t0, f"the step to t={t1:.6g} produced NaN/inf; {_UNSTABLE_HINT}")


def raise_non_finite_unrepeated(method: str, t_finite: float, t_bad: float) -> None:
    """Fixed-grid steps ended in a non-finite state at ``t_bad`` (finite at ``t_finite``), but
    their repeat, checking each step, did not fail again."""
    raise_non_finite(method, t_finite, f"the solution at t={t_bad:.6g} is not finite (a repeat of the steps "
                                       f"checking each one did not fail again: func does not repeat itself); "
                                       f"{_UNSTABLE_HINT}")
