"""Gradient mode "checkpoint": the exact discrete gradient of a fixed-grid solve at bounded memory.

``odeint_checkpointed`` returns the same solution as ``odeint`` and, in backward, the same
gradients as backpropagating through it ("backprop"), but it never keeps the autograd graph of
more than one step alive, and never more than ``checkpoints`` states of the trajectory: memory is
O(checkpoints), flat in the number of steps (diffrax's RecursiveCheckpointAdjoint idea).

How: the forward pass runs without recording. The backward pass walks the steps in reverse; to
get the state a step started from it recomputes forward from the nearest stored state. With
``s`` slots for a segment of ``n`` steps it stores the state at the segment's midpoint (one
slot), handles the right half recursively with ``s - 1`` slots, frees that state and handles
the left half with ``s`` slots; with one slot left it recomputes from the segment start for every
step. Recomputation costs O(n log n) steps while ``checkpoints > log2(n)``, growing towards
O(n^2 / 2) as ``checkpoints`` approaches 1.

Each step is one call of ``odeint`` on a two-point time grid, so the arithmetic (and the fused
rk_stage kernels it dispatches to) is exactly that of the recorded solve.

Scope: single-step fixed-grid Runge-Kutta methods (euler, midpoint, rk4, rk4_classic), output
times on the step grid. Adaptive methods (dopri5) and multistep Adams methods are refused with
a message naming the alternatives ("backprop", "adjoint").
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from odekern.solvers.checks import check_state, check_time

Tensor = torch.Tensor


def check_checkpoints(checkpoints: Any, name: str = "checkpoints") -> int:
    if isinstance(checkpoints, bool) or not isinstance(checkpoints, int) or checkpoints < 1:
        raise ValueError(f"{name} must be an int >= 1 (how many trajectory states the backward pass may "
                         f"hold at once), got {checkpoints!r}")
    return checkpoints


def checkpointable_methods() -> list[str]:
    from odekern.solvers.explicit_rk import FixedGridRK
    from odekern.solvers.registry import METHODS

    return sorted(name for name, cls in METHODS.items() if issubclass(cls, FixedGridRK))


def check_method_checkpointable(method: Optional[str]) -> str:
    methods = checkpointable_methods()
    if method not in methods:
        raise ValueError(
            f"gradient mode 'checkpoint' replays fixed-grid Runge-Kutta steps; method must be one of "
            f"{methods}, got {method!r}. For adaptive or multistep methods use gradient='backprop' "
            "(exact, memory grows with the steps) or gradient='adjoint' (memory flat)")
    return method


def _step_grid(t: Tensor, options: dict) -> Tensor:
    from odekern.solvers.fixed_grid import grid_from_step_size

    unsupported = sorted(set(options) - {"step_size", "interp", "norm"})
    if unsupported:
        raise ValueError(f"gradient mode 'checkpoint' does not support options {unsupported}; "
                         "it accepts 'step_size' (and ignores 'interp'/'norm', unused on the grid)")
    step = options.get("step_size")
    if step is None:
        return t
    step = float(step)
    if not step > 0:
        raise ValueError(f"options['step_size'] must be > 0, got {step}")
    reverse = t.numel() > 1 and bool(t[-1] < t[0])
    # odeint solves a decreasing t as the increasing -t; build the identical grid.
    return -grid_from_step_size(-t, step) if reverse else grid_from_step_size(t, step)


def _output_nodes(t: Tensor, grid: Tensor) -> list[int]:
    """Index in ``grid`` of every output time (outputs must lie on the step grid)."""
    spacing = (grid[1:] - grid[:-1]).abs().min().item() if grid.numel() > 1 else 1.0
    nodes = []
    for j, tj in enumerate(t.tolist()):
        dist = (grid - tj).abs()
        i = int(torch.argmin(dist))
        if dist[i].item() > 1e-6 * spacing:
            raise ValueError(
                f"gradient mode 'checkpoint' needs every output time on the step grid, but t[{j}]={tj} "
                f"falls between grid points (nearest {grid[i].item()}); choose a step_size that divides "
                "the output intervals, or use gradient='backprop'")
        nodes.append(i)
    return nodes


class _Plan:
    """What the backward pass needs to replay steps."""

    def __init__(self, func, grid, nodes, checkpoints, method, rtol, atol, params):
        self.func, self.grid, self.nodes = func, grid, nodes
        self.checkpoints, self.method, self.rtol, self.atol = checkpoints, method, rtol, atol
        self.params = params

    def step(self, i: int, y: Tensor) -> Tensor:
        from odekern.odeint import odeint

        return odeint(self.func, y, self.grid[i:i + 2], rtol=self.rtol, atol=self.atol, method=self.method)[1]

    def advance(self, i0: int, y: Tensor, i1: int) -> Tensor:
        """The state at node ``i1`` from the state at ``i0``, unrecorded. One odeint call over the
        segment with the grid handed in (grid_constructor): the solver double-buffers its state,
        so a long segment costs no more memory than one step, and the arithmetic is the same."""
        from odekern.odeint import odeint

        if i1 == i0:
            return y
        segment = self.grid[i0:i1 + 1]

        def grid_constructor(func, y0, t_internal):
            # odeint runs a decreasing t as the increasing -t and hands us that.
            return segment if bool(t_internal[0] == segment[0]) else -segment

        with torch.no_grad():
            out = odeint(self.func, y, segment[[0, -1]], rtol=self.rtol, atol=self.atol, method=self.method,
                         options={"grid_constructor": grid_constructor})
            return out[1].clone()


def _split(n: int) -> int:
    return max(1, n // 2)


class _Backward:
    """Reverse sweep over the steps with at most ``checkpoints`` stored states (see module doc)."""

    def __init__(self, plan: _Plan, node_grads: dict[int, Tensor]):
        self.plan = plan
        self.node_grads = node_grads
        self.param_grads: list[Optional[Tensor]] = [None] * len(plan.params)

    def vjp_step(self, i: int, y_i: Tensor, a_next: Tensor) -> Tensor:
        """Adjoint at node ``i`` from the adjoint at node ``i + 1``; accumulates parameter grads."""
        params = self.plan.params
        with torch.enable_grad():
            y = y_i.detach().requires_grad_()
            y_next = self.plan.step(i, y)
            grads = torch.autograd.grad(y_next, (y, *params), a_next, allow_unused=True)
        for p, g in enumerate(grads[1:]):
            if g is not None:
                self.param_grads[p] = g if self.param_grads[p] is None else self.param_grads[p] + g
        a = grads[0] if grads[0] is not None else torch.zeros_like(y_i)
        extra = self.node_grads.get(i)
        return a if extra is None else a + extra

    def sweep(self, i0: int, y0: Tensor, i1: int, slots: int, a: Tensor) -> Tensor:
        """Adjoint at node ``i0`` given the adjoint ``a`` at node ``i1`` and the state ``y0`` at i0."""
        n = i1 - i0
        if n == 1:
            return self.vjp_step(i0, y0, a)
        if slots <= 1:
            for i in range(i1 - 1, i0 - 1, -1):
                a = self.vjp_step(i, self.plan.advance(i0, y0, i), a)
            return a
        m = i0 + _split(n)
        y_m = self.plan.advance(i0, y0, m)
        a = self.sweep(m, y_m, i1, slots - 1, a)
        del y_m
        return self.sweep(i0, y0, m, slots, a)


class _CheckpointedSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan: _Plan, y0: Tensor, *params: Tensor) -> Tensor:
        nodes = sorted(set(plan.nodes))
        states = {nodes[0]: y0}
        y = y0
        for a, b in zip(nodes[:-1], nodes[1:]):
            y = states[b] = plan.advance(a, y, b)
        ctx.plan = plan
        ctx.save_for_backward(y0)
        return torch.stack([states[node] for node in plan.nodes])

    @staticmethod
    def backward(ctx, grad_solution: Tensor):
        plan: _Plan = ctx.plan
        (y0,) = ctx.saved_tensors
        node_grads: dict[int, Tensor] = {}
        for j, node in enumerate(plan.nodes):
            g = grad_solution[j]
            node_grads[node] = g if node not in node_grads else node_grads[node] + g
        last = max(plan.nodes)
        a_last = node_grads.get(last, torch.zeros_like(y0))
        if last == 0:
            return (None, a_last, *([None] * len(plan.params)))
        sweeper = _Backward(plan, {k: v for k, v in node_grads.items() if k != last})
        a0 = sweeper.sweep(0, y0, last, plan.checkpoints, a_last)
        return (None, a0, *sweeper.param_grads)


def odeint_checkpointed(func: Callable, y0: Tensor, t: Tensor, *, checkpoints: int, rtol: Any = 1e-7,
                        atol: Any = 1e-9, method: Optional[str] = "rk4", options: Optional[dict] = None,
                        adjoint_params: Optional[Sequence[Tensor]] = None) -> Tensor:
    """``odeint(func, y0, t, ...)`` whose backward recomputes steps from at most ``checkpoints``
    stored states: exact discrete gradients, memory flat in the number of steps.

    Gradients flow to ``y0`` and to ``adjoint_params`` (default: ``func.parameters()`` when ``func``
    is an ``nn.Module``), not to ``t``.
    """
    checkpoints = check_checkpoints(checkpoints)
    method = check_method_checkpointable(method)
    if not isinstance(y0, Tensor):
        raise TypeError(f"y0 must be a tensor for gradient mode 'checkpoint', got {type(y0).__name__}")
    check_state(y0)
    check_time(t)
    if t.requires_grad:
        raise ValueError("gradient mode 'checkpoint' does not differentiate with respect to t; "
                         "pass t without requires_grad or use gradient='backprop'")
    options = dict(options or {})
    grid = _step_grid(t, options)
    nodes = _output_nodes(t, grid) if t.numel() > 1 else [0]
    if adjoint_params is None:
        adjoint_params = tuple(func.parameters()) if isinstance(func, nn.Module) else ()
    params = tuple(p for p in adjoint_params if isinstance(p, Tensor) and p.requires_grad)
    plan = _Plan(func, grid, nodes, checkpoints, method, rtol, atol, params)
    return _CheckpointedSolve.apply(plan, y0, *params)
