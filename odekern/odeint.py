"""``odeint``: the single entry point to odekern's solvers, call-compatible with torchdiffeq.

``from odekern import odeint`` replaces ``from torchdiffeq import odeint``; the gradient modes
built on it live one layer up (``odekern/adjoint.py``, ``odekern/checkpoint.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from odekern.solvers import state
from odekern.solvers.base import RHS, SolveStatus
from odekern.solvers.checks import (
    check_method,
    check_options,
    check_state,
    check_state_matches_time,
    check_time,
    check_time_values,
    check_tolerance,
    check_tolerances_not_both_zero,
)
from odekern.solvers.norms import PER_SAMPLE, resolve_norm, rms_norm
from odekern.solvers.registry import ADAPTIVE_METHODS, DEFAULT_METHOD, METHODS

Tensor = torch.Tensor
State = Tensor | tuple


def odeint(func: Callable, y0: State, t: Tensor, *, rtol: Any = 1e-7, atol: Any = 1e-9,
           method: str | None = None, options: dict | None = None):
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0`` and return ``y`` at every time in ``t``.

    Same signature, defaults, option names and return value as ``torchdiffeq.odeint``.

    Args:
        func: ``func(t, y) -> dy/dt``; ``t`` is a 0-dim tensor in ``y``'s dtype, the result must
            have ``y``'s shape and dtype. For a tuple ``y0`` it takes and returns tuples; the
            solvers keep the components apart (no concatenation), so ``func`` may return a
            component of its input as is (e.g. ``(v, a)`` for the state ``(x, v)``).
        y0: initial state: a floating tensor of any shape, or a tuple of such tensors.
        t: 1-D tensor of output times, strictly increasing or strictly decreasing (a decreasing
            ``t`` integrates backward in time); same dtype and device as ``y0``. A list or tuple of
            Python numbers is also accepted: fixed-grid methods then read no tensor for the
            time grid, so ``torch.compile(fullgraph=True)`` traces the whole solve.
        rtol, atol: relative / absolute error tolerances (floats, or tensors broadcastable to
            ``y0``; tuples with one entry per component for a tuple state). Used by ``dopri5``
            (step control) and ``implicit_adams`` (corrector convergence).
        method: one of ``odekern.solvers.METHODS``: ``"dopri5"`` (default), ``"euler"``,
            ``"midpoint"``, ``"rk4"`` (3/8 rule, as torchdiffeq), ``"rk4_classic"``,
            ``"explicit_adams"``, ``"implicit_adams"``; also torchdiffeq's ``"heun2"``,
            ``"heun3"`` and ``"fixed_adams"`` (= implicit_adams).
        options: method options. Unknown names raise ``ValueError`` listing the valid ones.

            Fixed-grid methods (all but dopri5):
            ``step_size`` (grid ``t[0] + k*step_size``, last point clipped to ``t[-1]``; default:
            the grid is ``t``), ``grid_constructor(func, y0, t) -> grid``, ``interp`` (``"linear"``
            default, or ``"cubic"``) for outputs between grid points; Adams methods also take
            ``max_order`` (<= 12, default 12) and implicit_adams ``max_iters`` (default 4).

            ``dopri5``: ``first_step``, ``safety`` (0.9), ``ifactor`` (10), ``dfactor`` (0.2),
            ``min_step`` (0) / ``max_step`` (inf) bounds on the step size, ``max_num_steps``
            (attempts per output interval, as torchdiffeq), ``step_t`` / ``jump_t`` (times the
            solver must step on; ``jump_t`` marks discontinuities of ``func``), ``norm`` and
            ``on_max_steps``.

            ``norm``: a callable (as torchdiffeq), ``"rms"`` (default), ``"max"``, or
            ``"per_sample"``: every element along dim 0 of ``y0`` gets its own step sizes, as if
            solved alone (``func`` is then called on batch-1 slices, so it must treat batch
            elements independently).

            ``on_max_steps``: ``"raise"`` (default) raises ``RuntimeError`` naming the time reached
            and the last step size when ``max_num_steps`` is exceeded. ``"return"`` makes odeint
            return ``(solution, status)`` instead of ``solution``: ``status`` is an
            ``odekern.solvers.SolveStatus`` (``success``, ``message``, ``t_reached``,
            ``n_outputs_reached``, step counts); rows of ``solution`` after ``n_outputs_reached``
            repeat the last state reached.

    Returns:
        ``solution`` of shape ``[len(t), *y0.shape]`` (a tuple of such tensors for a tuple
        ``y0``); ``(solution, status)`` when ``options["on_max_steps"] == "return"``.

    Raises:
        TypeError / ValueError for bad arguments (the message names the argument);
        RuntimeError when ``max_num_steps`` is exceeded or the step size underflows;
        ``odekern.solvers.NonFiniteError`` when the solution becomes NaN/inf (names the time).
    """
    method = check_method(method, METHODS, DEFAULT_METHOD)
    if method in ADAPTIVE_METHODS and state.inside_vmap():
        raise ValueError(f"odeint(method={method!r}) cannot run under torch.func.vmap: an adaptive "
                         "method's step sizes depend on the state's values. Use a fixed-grid method "
                         "(e.g. method='rk4' with options={'step_size': ...}) inside vmap, or solve the "
                         "batch directly with options={'norm': 'per_sample'}")
    solver_cls = METHODS[method]
    options = check_options(method, options, solver_cls.OPTIONS)
    check_state(y0)
    check_tolerance(rtol, "rtol")
    check_tolerance(atol, "atol")
    if method in ADAPTIVE_METHODS:
        check_tolerances_not_both_zero(rtol, atol, method)
    t_values = None
    if isinstance(t, (list, tuple)):
        # Times as Python numbers: fixed-grid solves then never read a tensor, so
        # torch.compile(fullgraph=True) traces them whole.
        reverse = check_time_values(t)
        t_values = [float(v) for v in t]
        like = state.first(y0)
        t = torch.tensor(t_values, dtype=like.dtype, device=like.device)
    else:
        reverse = check_time(t)
    check_state_matches_time(y0, t)
    return_status = options.get("on_max_steps", "raise") == "return"

    tuple_state = state.is_tuple(y0)
    rtol, atol = _as_state_tolerance(rtol, y0, "rtol"), _as_state_tolerance(atol, y0, "atol")
    norm = resolve_norm(options.pop("norm", None), tuple_state)

    if reverse:
        t = -t
        t_values = None if t_values is None else [-v for v in t_values]
        _flip_time_options(options)

    if state.numel(y0) == 0:
        # Nothing to integrate (and an RMS norm of no elements is NaN): the state stays empty.
        solution = state.map_state(lambda c: c.unsqueeze(0).expand(len(t), *c.shape).clone(), y0)
        status = SolveStatus(True, "empty state", float(t[-1].detach()) * (-1.0 if reverse else 1.0), len(t), 0.0)
    elif norm == PER_SAMPLE:
        solution, status = _solve_per_sample(func, y0, t, rtol, atol, method, options, reverse)
    else:
        solver = solver_cls(RHS(func, -1.0 if reverse else 1.0), y0, rtol, atol, method=method, norm=norm,
                            **options)
        solution, status = solver.integrate(t, t_values)
    return (solution, status) if return_status else solution


def _as_state_tolerance(tol: Any, y0: state.State, name: str) -> Any:
    """A tolerance in the state's dtype/device; a tuple/list gives one entry per component of a
    tuple state (kept as a tuple: the solvers apply entry ``i`` to component ``i``)."""
    if isinstance(tol, (tuple, list)):
        if not state.is_tuple(y0):
            raise ValueError(f"{name} given per component (a {type(tol).__name__}) needs a tuple state y0; "
                             "for a tensor y0 pass a float or a tensor broadcastable to y0")
        if len(tol) != len(y0):
            raise ValueError(f"a tuple tolerance must have one entry per component of y0 ({len(y0)}), got {len(tol)}")
        return tuple(_as_state_tolerance(v, c, name) for v, c in zip(tol, y0))
    like = state.first(y0)
    return tol.to(dtype=like.dtype, device=like.device) if isinstance(tol, Tensor) else tol


def _flip_time_options(options: dict) -> None:
    """Re-express time-valued options for the negated time axis used by a backward solve."""
    for name in ("step_t", "jump_t"):
        if options.get(name) is not None:
            options[name] = [-float(v) for v in torch.as_tensor(options[name]).reshape(-1).tolist()]
    user_grid = options.get("grid_constructor")
    if user_grid is not None:
        options["grid_constructor"] = lambda f, y, t_neg: -user_grid(f, y, -t_neg)


def _solve_per_sample(func, y0, t, rtol, atol, method, options, reverse):
    """``norm="per_sample"``: solve each batch element (dim 0) with its own step-size control.

    A tuple state is sliced per component (all must share the batch size); each sample's error
    is the RMS over all of its components."""
    parts = state.components(y0)
    batch = {p.shape[0] if p.dim() else 0 for p in parts}
    if len(batch) != 1 or 0 in batch:
        raise ValueError("options['norm']='per_sample' needs a y0 with a non-empty batch dimension 0 "
                         "(the same for every component of a tuple state)")
    if method not in ADAPTIVE_METHODS:
        raise ValueError(f"options['norm']='per_sample' only applies to adaptive methods "
                         f"({sorted(ADAPTIVE_METHODS)}), not {method!r}")
    solver_cls = METHODS[method]
    outs, statuses = [], []
    for b in range(batch.pop()):
        sample = state.map_state(lambda c, b=b: c[b:b + 1], y0)
        solver = solver_cls(RHS(func, -1.0 if reverse else 1.0), sample, _sample_tol(rtol, y0, b),
                            _sample_tol(atol, y0, b), method=method, norm=rms_norm, **options)
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
