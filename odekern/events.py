"""``odeint_event``: solve until an event and differentiate the event time (torchdiffeq's API).

The event time ``T`` solves ``g(T, y(T)) = 0`` (``g`` = ``event_fn``, combined over its
elements). By the implicit function theorem, for any parameter ``p`` (``y0``, ``t0``, weights
of ``func``)

    dT/dp = -(dg/dy . dy(T)/dp) / (dg/dt + dg/dy . f(T, y(T)))

so a gradient reaching ``T`` can be rerouted onto the state at the event: ``_EventGradient``
adds ``dg/dy * (-dL/dT_total / dg/dt_total)`` to the state's incoming gradient, and whatever
differentiates the solve (backprop or the adjoint) carries it to ``y0``, ``t0`` and the
parameters. ``dL/dT_total`` includes the state's own motion, ``dL/dy(T) . f(T, y(T))``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.autograd import forward_ad

from odekern.module_state import forward_tensors, tensors_as_in_forward
from odekern.odeint import odeint
from odekern.solvers import state
from odekern.solvers.checks import check_time_scalar, from_numpy
from odekern.solvers.double_backward import refuse_second_order
from odekern.solvers.events import combine_event_functions

Tensor = torch.Tensor

# Added to dg/dt_total so that a tangential crossing (dg/dt_total = 0) gives a huge, not an
# infinite, gradient (torchdiffeq's constant).
_DENOMINATOR_EPS = 1e-12


def odeint_event(func: Callable, y0: Any, t0: Any, *, event_fn: Callable, reverse_time: bool = False,
                 odeint_interface: Callable = odeint, **kwargs: Any):
    """Solve ``dy/dt = func(t, y)`` from ``(t0, y0)`` until ``event_fn(t, y)`` crosses zero.

    Same signature and result as ``torchdiffeq.odeint_event``: returns ``(event_t, solution)``,
    ``solution`` holding ``y0`` and the state at ``event_t`` (shape ``[2, *y0.shape]``; a tuple for
    a tuple ``y0``). ``event_t`` is differentiable with respect to ``y0``, ``t0`` and ``func``'s
    parameters (implicit function theorem, see the module docstring), with ``odeint`` or
    ``odeint_adjoint`` as ``odeint_interface``. ``reverse_time`` integrates towards smaller
    times. ``kwargs`` (``rtol``, ``atol``, ``method``, ``options``, ``adjoint_*``...) go to
    ``odeint_interface``; ``atol`` is also the tolerance on the event time.

    Repeated events (a bouncing ball): restart from the returned state, modified as the model
    says, with the returned ``event_t`` as the next ``t0``.
    """
    t0 = from_numpy(t0)
    check_time_scalar(t0, "odeint_event: t0")
    if not isinstance(t0, Tensor):  # torchdiffeq needs a tensor; a number is taken in y0's dtype
        like = state.first(y0)
        t0 = torch.tensor(float(t0), dtype=like.dtype, device=like.device)
    start = t0.reshape(-1)
    t = torch.cat([start, start.detach() + (-1.0 if reverse_time else 1.0)])
    event_t, solution = odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)

    combined = combine_event_functions(event_fn, t[0], y0)
    parts = state.components(solution)
    # An autograd.Function's backward is invisible to torch.func transforms and forward-mode AD:
    # there the same rerouting is done with differentiable ops.
    reroute = _reroute_with_ops if state.inside_transform() else _EventGradient.apply
    out = reroute(func, combined, state.is_tuple(y0), event_t, *(p[-1] for p in parts))
    event_t, state_t = out[0], out[1:]
    solution = state.rebuild(solution, (torch.cat([p[:-1], s[None]]) for p, s in zip(parts, state_t)))
    return event_t, solution


_NO_SECOND_ORDER = ("odeint_event: second derivatives of the event time (a gradient taken with "
                    "create_graph=True, differentiated again) are not supported; its first derivatives are")


class _EventGradient(torch.autograd.Function):
    """Identity on ``(event_t, *state_at_event)``; backward reroutes ``dL/d event_t`` onto the
    state at the event (see the module docstring). ``event_t`` itself gets no gradient: its
    dependence on everything goes through the state."""

    @staticmethod
    def forward(ctx, func, event_fn, tuple_state, event_t, *state_t):
        ctx.func, ctx.event_fn, ctx.tuple_state = func, event_fn, tuple_state
        ctx.module_tensors = forward_tensors(func)  # as the solve saw them (module_state.py)
        ctx.save_for_backward(event_t, *state_t)
        return (event_t.detach(), *(s.detach() for s in state_t))

    @staticmethod
    def backward(ctx, grad_t, *grad_state):
        saved = ctx.saved_tensors  # once: torch.utils.checkpoint around a solve unpacks each once
        event_t, *state_t = saved
        event_t = event_t.detach().clone().requires_grad_(True)
        state_t = [s.detach().clone().requires_grad_(True) for s in state_t]
        user = tuple(state_t) if ctx.tuple_state else state_t[0]
        grad_t = torch.zeros_like(event_t) if grad_t is None else grad_t
        grad_state = [torch.zeros_like(s) if g is None else g for s, g in zip(state_t, grad_state)]
        with torch.no_grad(), tensors_as_in_forward(ctx.func, ctx.module_tensors):
            # func sees time in the state's dtype, as in the solve.
            f_val = state.components(ctx.func(event_t.to(state_t[0].dtype), user))
        with torch.enable_grad():
            c = ctx.event_fn(event_t, user)
            par_dt, *dstate = torch.autograd.grad(c, [event_t, *state_t], allow_unused=True)
        par_dt = torch.zeros_like(event_t) if par_dt is None else par_dt
        dstate = [torch.zeros_like(s) if d is None else d for s, d in zip(state_t, dstate)]
        # Total derivative of the event function along the trajectory at the event.
        dcdt = par_dt + sum(torch.sum(d * f) for d, f in zip(dstate, f_val))
        # The state's own motion: moving the event time moves the returned state by f.
        grad_t = grad_t + sum(torch.sum(g * f) for g, f in zip(grad_state, f_val))
        factor = (-grad_t / (dcdt + _DENOMINATOR_EPS)).reshape(())
        grad_state = [g + d * factor.to(d.dtype) for g, d in zip(grad_state, dstate)]
        # f and dg/dy are held constant here: a second derivative through this would be wrong.
        return (None, None, None, None, *refuse_second_order(grad_state, saved, _NO_SECOND_ORDER))


def _reroute_with_ops(func, event_fn, tuple_state, event_t, *state_t):
    """``_EventGradient`` in differentiable ops, with the same first derivatives: zero-valued
    terms carry them. The event time moves by ``-(dg/dy . dy) / dg/dt_total`` and the state with
    it along ``f``, so a derivative reaching either lands on the state at the event as there.
    ``f``, ``dg/dt`` and ``dg/dy`` are constants, as in ``_EventGradient.backward``, so second
    derivatives would be wrong: nested differentiating transforms are refused."""
    if _differentiating_levels() > 1:
        raise RuntimeError("odeint_event: second derivatives of the event time (nested grad / jacrev / "
                           "jvp / jacfwd, hessian) are not supported; its first derivatives are")
    t_const = event_t.detach()
    s_const = [s.detach() for s in state_t]

    def as_user(parts):
        return tuple(parts) if tuple_state else parts[0]

    with torch.no_grad():  # func sees time in the state's dtype, as in the solve
        f_val = [f.detach() for f in state.components(func(t_const.to(s_const[0].dtype), as_user(s_const)))]
    c, pull = torch.func.vjp(lambda tt, *ss: event_fn(tt, as_user(list(ss))), t_const, *s_const)
    par_dt, *dstate = (d.detach() for d in pull(torch.ones_like(c)))
    dcdt = par_dt + sum(torch.sum(d * f) for d, f in zip(dstate, f_val))
    moved = sum(torch.sum(d * (s - s.detach())) for d, s in zip(dstate, state_t))
    shift = (-moved / (dcdt + _DENOMINATOR_EPS)).reshape(())
    return (t_const + shift.to(t_const.dtype),
            *(s + f * shift.to(s.dtype) for s, f in zip(state_t, f_val)))


def _differentiating_levels() -> int:
    """How many active transforms differentiate: torch.func grad / jvp levels (vmap batches and
    does not count), else 1 for a forward-mode AD level (torch.func.jvp opens one itself)."""
    differentiating = (torch._C._functorch.TransformType.Grad, torch._C._functorch.TransformType.Jvp)
    stack = torch._C._functorch.get_interpreter_stack() or []
    levels = sum(level.key() in differentiating for level in stack)
    return levels if levels else int(forward_ad._current_level >= 0)


__all__ = ["odeint_event"]
