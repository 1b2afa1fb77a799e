"""``odeint``: the single entry point to odekern's solvers, call-compatible with torchdiffeq.

``from odekern import odeint`` replaces ``from torchdiffeq import odeint``; the gradient modes
built on it live one layer up (``odekern/adjoint.py``, ``odekern/checkpoint.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import warnings

import torch

from odekern.solvers import events, state
from odekern.solvers.base import RHS, SolveStatus, step_callbacks
from odekern.solvers.checks import (
    AssertedValueError,
    check_method,
    check_options,
    check_state,
    check_tolerance,
    check_tolerance_fits,
    check_tolerance_resolvable,
    check_tolerances_not_both_zero,
    from_numpy,
    options_from_numpy,
    time_argument,
    time_points,
)
from odekern.solvers.norms import GLOBAL, PER_SAMPLE, canonical_control, resolve_norm, rms_norm
from odekern.solvers.registry import ADAPTIVE_METHODS, DEFAULT_METHOD, METHODS

Tensor = torch.Tensor
State = Tensor | tuple


def odeint(func: Callable, y0: State, t: Tensor, *, rtol: Any = 1e-7, atol: Any = 1e-9,
           method: str | None = None, options: dict | None = None, event_fn: Callable | None = None):
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0`` and return ``y`` at every time in ``t``.

    Same signature, defaults, option names and return value as ``torchdiffeq.odeint``.

    Args:
        func: ``func(t, y) -> dy/dt``; ``t`` is a 0-dim tensor in ``y``'s dtype, the result must
            have ``y``'s shape and dtype. For a tuple ``y0`` it takes and returns tuples; the
            solvers keep the components apart (no concatenation), so ``func`` may return a
            component of its input as is (e.g. ``(v, a)`` for the state ``(x, v)``).
        y0: initial state: a floating tensor of any shape, or a tuple of such tensors.
        t: 1-D floating tensor of output times, strictly increasing or strictly decreasing (a
            decreasing ``t`` integrates backward in time). Any floating dtype (torchdiffeq's rules:
            fixed grids step in ``t``'s precision, adaptive methods hold time in float64, ``func``
            gets time in ``y0``'s dtype, the solution has ``y0``'s dtype); on another device than
            ``y0`` it is moved there with torchdiffeq's warning. A list or tuple of Python numbers
            is also accepted: fixed-grid methods then read no tensor for the time grid, so
            ``torch.compile(fullgraph=True)`` traces the whole solve.
        rtol, atol: relative / absolute error tolerances (floats, or tensors broadcastable to
            ``y0``; tuples with one entry per component for a tuple state). Used by ``dopri5``
            (step control) and ``implicit_adams`` (corrector convergence).
        method: one of ``odekern.solvers.METHODS``: ``"dopri5"`` (default), ``"euler"``,
            ``"midpoint"``, ``"rk4"`` (3/8 rule, as torchdiffeq), ``"rk4_classic"``,
            ``"explicit_adams"``, ``"implicit_adams"``; also torchdiffeq's ``"heun2"``,
            ``"heun3"`` and ``"fixed_adams"`` (= implicit_adams).
        options: method options. A name the method does not take is dropped with torchdiffeq's
            warning (``"RK4: Unexpected arguments {...}"``); a bad value raises.

            Fixed-grid methods (all but dopri5):
            ``step_size`` (grid ``t[0] + k*step_size``, last point clipped to ``t[-1]``; default:
            the grid is ``t``), ``grid_constructor(func, y0, t) -> grid``, ``interp`` (``"linear"``
            default, or ``"cubic"``) for outputs between grid points, ``perturb`` (default False:
            True evaluates ``func`` just after each step's start and just before its end, for a
            ``func`` discontinuous at grid points); Adams methods also take ``max_order`` (<= 12,
            default 12), ``max_iters`` (default 4) and implicit_adams ``implicit`` (default True).

            ``dopri5``: ``first_step``, ``safety`` (0.9), ``ifactor`` (10), ``dfactor`` (0.2),
            ``min_step`` (0) / ``max_step`` (inf) bounds on the step size, ``max_num_steps``
            (attempts per output interval, as torchdiffeq), ``step_t`` / ``jump_t`` (times the
            solver must step on; ``jump_t`` marks discontinuities of ``func``), ``dtype`` (of time,
            float64; promoted with ``y0``'s), ``norm`` and ``on_max_steps`` (every method).

            ``norm``: a callable (as torchdiffeq), ``"rms"`` (default) or ``"max"``.

            ``control`` (adaptive methods): ``"global"`` (default: one step size for the whole
            state, as torchdiffeq) or ``"per_sample"``: every element along dim 0 of ``y0`` gets
            its own step sizes, as if solved alone (``func`` is then called on batch-1 slices, so
            it must treat batch elements independently; the error norm is RMS unless ``norm`` is
            given). The former spelling ``norm="per_sample"`` still works, with a
            DeprecationWarning.

            ``on_max_steps``: ``"raise"`` (default) raises ``RuntimeError`` naming the time reached
            and the last step size when ``max_num_steps`` is exceeded. ``"return"`` makes odeint
            return ``(solution, status)`` instead of ``solution``: ``status`` is an
            ``odekern.solvers.SolveStatus`` (``success``, ``message``, ``t_reached``,
            ``n_outputs_reached``, step counts); rows of ``solution`` after ``n_outputs_reached``
            repeat the last state reached.

        event_fn: ``event_fn(t, y) -> tensor``: solve from ``t[0]`` until it crosses zero (any
            element, for a multivariate one) and return ``(event_t, solution)`` with ``solution``
            of length 2 (``y0`` and the state at the event). ``t`` must have 2 entries (only
            ``t[0]`` and the direction count). Fixed-grid methods need ``step_size``. The event
            time carries no gradient here: use ``odekern.odeint_event`` for that.

        ``func`` may define torchdiffeq's step callbacks ``callback_step(t0, y0, dt)`` (every
        method), ``callback_accept_step`` / ``callback_reject_step`` (adaptive methods); they are
        called exactly where torchdiffeq calls them.

        Inside ``torch.compile`` a solve whose steps follow the state's values (an adaptive
        method, ``scipy_solver``, ``event_fn``) runs eagerly, one graph break; a ``func``
        compiled on its own stays compiled there.

    Returns:
        ``solution`` of shape ``[len(t), *y0.shape]`` (a tuple of such tensors for a tuple
        ``y0``); ``(solution, status)`` when ``options["on_max_steps"] == "return"``;
        ``(event_t, solution)`` with ``event_fn``.

    Raises:
        TypeError / ValueError for bad arguments (the message names the argument; those
        torchdiffeq rejects with ``assert`` are also ``AssertionError``s);
        ``odekern.solvers.SolveError`` (a ``RuntimeError`` and an ``AssertionError``, as
        torchdiffeq's ``assert``) when ``max_num_steps`` is exceeded or the step size underflows;
        ``odekern.solvers.NonFiniteError``, a ``SolveError``, when the solution becomes NaN/inf
        (names the time).
    """
    if torch.compiler.is_compiling() and _steps_follow_values(method, event_fn):
        return _odeint_eagerly(func, y0, t, rtol=rtol, atol=atol, method=method, options=options, event_fn=event_fn)
    rtol, atol, options = from_numpy(rtol), from_numpy(atol), options_from_numpy(options)
    method, y0, t, t_values, options, reverse, callbacks = checked_inputs(func, y0, t, rtol, atol, method,
                                                                          options)
    return_status = options.get("on_max_steps", "raise") == "return"
    if event_fn is not None:
        if state.inside_vmap():
            raise ValueError("odeint(event_fn=...) and odeint_event cannot run under torch.func.vmap: the "
                             "event time is found by root finding on the state's values; solve each batch "
                             "element's event in a loop (vmap over a fixed-grid odeint without event_fn works)")
        return _solve_until_event(func, y0, t, rtol, atol, method, options, event_fn, reverse, return_status)

    if state.numel(y0) == 0:
        # Nothing to integrate (and an RMS norm of no elements is NaN): the state stays empty; a
        # bad norm is refused all the same.
        resolve_norm(options.get("norm"), state.is_tuple(y0))
        solution = state.map_state(lambda c: c.unsqueeze(0).expand(len(t), *c.shape).clone(), y0)
        status = SolveStatus(True, "empty state", float(t[-1].detach()), len(t), 0.0)
    elif options.get("control", GLOBAL) == PER_SAMPLE:
        solution, status = _solve_per_sample(func, y0, t, rtol, atol, method, options, reverse, callbacks)
    else:
        solver = build_solver(func, y0, rtol, atol, method, options, reverse, callbacks)
        if reverse:
            t = -t
            t_values = None if t_values is None else [-v for v in t_values]
        solution, status = solver.integrate(t, t_values)
    return (solution, status) if return_status else solution


# Solves whose steps depend on the state's values: an adaptive method's accept decisions, SciPy's
# solver (on NumPy), an event search's root finding.
_VALUE_DEPENDENT_METHODS = ADAPTIVE_METHODS | {"scipy_solver"}


def _steps_follow_values(method: Any, event_fn: Callable | None) -> bool:
    """Whether the solve reads the state's values to choose its steps, so no graph can hold it."""
    name = DEFAULT_METHOD if method is None else method
    return event_fn is not None or (isinstance(name, str) and name in _VALUE_DEPENDENT_METHODS)


# Run eagerly inside a compiled caller (one graph break here): a value-dependent solve reads the
# host at every step, so Dynamo compiled it frame by frame, recompiling as the step count changed
# (32 graphs and ~55 s for a dopri5 block of a small conv RHS, which then ran slower than eagerly).
# A func compiled on its own (torch.compile(func)) stays compiled inside.
_odeint_eagerly = torch._disable_dynamo(lambda *args, **kwargs: odeint(*args, **kwargs))


def checked_inputs(func: Callable, y0: Any, t: Any, rtol: Any, atol: Any, method: str | None,
                   options: dict | None) -> tuple[str, State, Tensor, list | None, dict, bool, dict]:
    """odeint's argument checks and torchdiffeq's normalisations (options without the names the
    method does not take, tuple state promoted, ``t`` on ``y0``'s device, callback warnings).

    Returns ``(method, y0, t, t_values, options, reverse, callbacks)``: ``t_values`` the times as
    Python numbers when given so (else None), ``reverse``: ``t`` decreases, ``callbacks``: the
    step callbacks ``func`` has (``base.step_callbacks``)."""
    if not callable(func):
        raise TypeError(f"func must be callable (func(t, y) returns dy/dt), got {type(func).__name__}")
    method = check_method(method, METHODS, DEFAULT_METHOD)
    if method in ADAPTIVE_METHODS and state.inside_vmap():
        raise ValueError(f"odeint(method={method!r}) cannot run under torch.func.vmap: an adaptive "
                         "method's step sizes depend on the state's values. Use a fixed-grid method "
                         "(e.g. method='rk4' with options={'step_size': ...}) inside vmap, or solve the "
                         "batch directly with options={'control': 'per_sample'}")
    solver_cls = METHODS[method]
    options = check_options(method, canonical_control(options), solver_cls.OPTIONS)
    y0 = promote_tuple_state(y0)
    check_state(y0)
    check_tolerance(rtol, "rtol")
    check_tolerance(atol, "atol")
    if method in ADAPTIVE_METHODS or getattr(solver_cls, "implicit", False):  # the methods that use them
        check_tolerance_fits(rtol, y0, "rtol")
        check_tolerance_fits(atol, y0, "atol")
    if method in ADAPTIVE_METHODS:
        check_tolerances_not_both_zero(rtol, atol, method)
        check_tolerance_resolvable(rtol, atol, y0, method)
    t, t_values, reverse = time_argument(t, y0)
    callbacks = step_callbacks(func)
    warn_unsupported_callbacks(callbacks, method, solver_cls.CALLBACKS)
    return method, y0, t, t_values, options, reverse, callbacks


def build_solver(func: Callable, y0: State, rtol: Any, atol: Any, method: str, options: dict, reverse: bool,
                 callbacks: dict | None = None, rhs_cls: type = RHS, solver_cls: type | None = None):
    """The solver for checked inputs; ``reverse``: it runs on negated time (``options`` are
    re-expressed for that in place). ``callbacks``: ``func``'s step callbacks where already looked
    up; ``rhs_cls`` / ``solver_cls``: subclasses of ``RHS`` / of the method's solver to build instead."""
    if options.pop("control", GLOBAL) == PER_SAMPLE:
        raise ValueError(f"options['control']='per_sample' is not supported here (method {method!r}): it solves "
                         "each sample separately")
    if state.numel(y0) == 0:
        raise ValueError("y0 must not be empty here")
    norm = resolve_norm(options.pop("norm", None), state.is_tuple(y0))
    if reverse:
        flip_time_options(options)
    return (solver_cls or METHODS[method])(rhs_cls(func, -1.0 if reverse else 1.0, callbacks), y0,
                                           _as_state_tolerance(rtol, y0, "rtol"), _as_state_tolerance(atol, y0, "atol"),
                                           method=method, norm=norm, **options)


def promote_tuple_state(y0: Any) -> Any:
    """A tuple state whose components differ in floating dtype, all cast to the promoted dtype
    (differentiably): torchdiffeq concatenates the components, so it solves and returns them in
    that dtype too."""
    if not isinstance(y0, tuple) or len(y0) < 2 or not all(
            isinstance(c, Tensor) and (c.is_floating_point() or c.is_complex()) for c in y0):
        return y0
    dtypes = {c.dtype for c in y0}
    if len(dtypes) == 1:
        return y0
    common = functools.reduce(torch.promote_types, dtypes)
    return tuple(c.to(common) for c in y0)


def warn_unsupported_callbacks(callbacks: dict, method: str, supported: frozenset) -> None:
    """torchdiffeq's warning when ``func`` has step callbacks (``callbacks``, from
    ``base.step_callbacks``) the method never calls."""
    unsupported = set(callbacks) - supported
    if unsupported:
        warnings.warn(f"Solver '{method}' does not support callbacks {unsupported}")


def _solve_until_event(func, y0, t, rtol, atol, method, options, event_fn, reverse, return_status):
    """``odeint(..., event_fn=...)``: ``(event_t, [y0, y(event_t)])`` (see ``solvers.events``)."""
    if len(t) != 2:
        raise ValueError(f"We require len(t) == 2 when in event handling mode, but got len(t)={len(t)}.")
    if not callable(event_fn):
        raise TypeError(f"event_fn must be callable as event_fn(t, y), got {type(event_fn).__name__}")
    if return_status:
        raise ValueError("options['on_max_steps']='return' cannot be combined with event_fn: the event search "
                         "raises when max_num_steps is exceeded")
    if options.get("control") == PER_SAMPLE:
        raise ValueError("options['control']='per_sample' cannot be combined with event_fn: an event is one time "
                         "for the whole state")
    combined = events.combine_event_functions(event_fn, t[0], y0)
    solver_event = (lambda s, y: combined(-s, y)) if reverse else combined
    solver = build_solver(func, y0, rtol, atol, method, options, reverse)
    if reverse:
        t = -t
    event_t, y_event = events.until_event(solver, t[0], solver_event, options.get("max_num_steps"))
    event_t = event_t.to(t)
    solution = state.rebuild(y0, (torch.stack([a, b]) for a, b in zip(state.components(y0), state.components(y_event))))
    return (-event_t if reverse else event_t), solution


def _as_state_tolerance(tol: Any, y0: state.State, name: str) -> Any:
    """A tolerance in the state's dtype/device; a tuple/list gives one entry per component of a
    tuple state (kept as a tuple: the solvers apply entry ``i`` to component ``i``)."""
    if isinstance(tol, (tuple, list)):
        if not state.is_tuple(y0):
            raise ValueError(f"{name} given per component (a {type(tol).__name__}) needs a tuple state y0; "
                             "for a tensor y0 pass a float or a tensor broadcastable to y0")
        if len(tol) != len(y0):
            # torchdiffeq asserts this length.
            raise AssertedValueError(f"{name} given per component must have one entry per component of y0 "
                                     f"({len(y0)}), got {len(tol)}")
        return tuple(_as_state_tolerance(v, c, name) for v, c in zip(tol, y0))
    like = state.first(y0)
    return tol.to(dtype=state.real_dtype(like.dtype), device=like.device) if isinstance(tol, Tensor) else tol


def flip_time_options(options: dict) -> None:
    """Re-express time-valued options for the negated time axis used by a backward solve."""
    for name in ("step_t", "jump_t"):
        if options.get(name) is not None:
            options[name] = [-v for v in time_points(options[name], name)]
    user_grid = options.get("grid_constructor")
    if user_grid is not None:
        options["grid_constructor"] = lambda f, y, t_neg: -user_grid(f, y, -t_neg)


def _solve_per_sample(func, y0, t, rtol, atol, method, options, reverse, callbacks):
    """``control="per_sample"``: solve each batch element (dim 0) with its own step-size control.

    A tuple state is sliced per component (all must share the batch size); each sample's error
    is ``options["norm"]`` of all of its components (RMS when not given)."""
    parts = state.components(y0)
    batch = {p.shape[0] if p.dim() else 0 for p in parts}
    if len(batch) != 1 or 0 in batch:
        raise ValueError("options['control']='per_sample' needs a y0 with a non-empty batch dimension 0 "
                         "(the same for every component of a tuple state)")
    if method not in ADAPTIVE_METHODS:
        raise ValueError(f"options['control']='per_sample' only applies to adaptive methods "
                         f"({sorted(ADAPTIVE_METHODS)}), not {method!r}")
    rtol, atol = _as_state_tolerance(rtol, y0, "rtol"), _as_state_tolerance(atol, y0, "atol")
    options = {name: value for name, value in options.items() if name != "control"}
    options["norm"] = rms_norm if options.get("norm") is None else options["norm"]
    if reverse:
        t = -t
    outs, statuses = [], []
    for b in range(batch.pop()):
        sample = state.map_state(lambda c, b=b: c[b:b + 1], y0)
        solver = build_solver(func, sample, _sample_tol(rtol, y0, b), _sample_tol(atol, y0, b), method,
                              dict(options), reverse, callbacks)
        sol, st = solver.integrate(t)
        outs.append(state.components(sol))
        statuses.append(st)
    failed = [s for s in statuses if not s.success]
    first = failed[0] if failed else statuses[-1]
    status = SolveStatus(
        success=not failed,
        message=first.message if failed else "every sample reached the last output time",
        t_reached=first.t_reached, n_outputs_reached=min(s.n_outputs_reached for s in statuses),
        last_dt=first.last_dt, n_steps=sum(s.n_steps for s in statuses),
        n_rejected=sum(s.n_rejected for s in statuses), nfe=sum(s.nfe for s in statuses),
        per_sample=tuple(statuses))
    return state.rebuild(y0, (torch.cat(rows, dim=1) for rows in zip(*outs))), status


def _sample_tol(tol: Any, y0: state.State, b: int) -> Any:
    """A tolerance tensor with y0's full shape is sliced to sample ``b``; others broadcast as is
    (a per-component tuple is handled entry by entry)."""
    if isinstance(tol, tuple):
        return tuple(_sample_tol(v, c, b) for v, c in zip(tol, y0))
    if isinstance(tol, Tensor) and tol.dim() == y0.dim() and tol.shape[0] == y0.shape[0] and y0.shape[0] > 1:
        return tol[b:b + 1]
    return tol


__all__ = ["odeint"]
