"""Gradient mode "checkpoint": the exact discrete gradient of a Runge-Kutta solve at bounded memory.

``odeint_checkpointed`` returns the same solution as ``odeint`` and, in backward, the same
gradients as backpropagating through it ("backprop"), but it never keeps the autograd graph of
more than one step alive, and never more than ``checkpoints`` states of the trajectory (the
initial state included): memory is O(checkpoints), flat in the number of steps (diffrax's
RecursiveCheckpointAdjoint idea).

How: the forward pass runs without recording and stores only the states the backward pass needs
first. The backward pass reverses the steps one at a time (recording one step, backpropagating
through it, dropping its graph); the state a step starts from is recomputed forward from the
nearest stored state, following the binomial (revolve) schedule of
``odekern/solvers/checkpoint_schedule.py``. Recompute cost, for ``n`` steps and ``c`` checkpoints:
no step is recomputed more than ``r`` times, ``r`` the smallest integer with
``C(c + r, c) >= n``; in total ``r * n - C(c + r, c + 1)`` recomputed steps minus the ones the
forward pass already stored (``n <= c``: none; 64 steps: about 3.1n with c=4, 1.8n with c=10;
c=1: ``n (n - 1) / 2``). Recomputation runs without autograd and holds, besides the state it
stores, one scratch state and one step's stage values, freed before the next recorded step.

Every step, recorded or not, is the same ``RKStepper.step`` call with the same time tensors and
step sizes as ``odeint``'s fixed-grid loop, so the arithmetic (and the fused rk_stage kernels it
dispatches to) is exactly that of the recorded solve; the backward pass re-enters the forward's
forced backend and autocast settings, which autograd does not carry into it, and sets the random
number generators where a retaken step starts as they were there (``solvers/random_state.py``).
It leaves the buffers of ``func``'s training-mode modules as it found them and refuses to
differentiate its own gradient (``solvers/double_backward.py``). No step reads a tensor value on
the host (a device sync on a GPU): step sizes are read once, NaN/inf is checked once, on the
final state.

The state may be a tuple of tensors (a second-order block's ``(x, v)``): it is handled per
component like ``odeint`` does, never concatenated, and the result is a tuple of solutions.

Scope: one-step Runge-Kutta methods. Fixed-grid ones (euler, midpoint, heun2/3, rk4,
rk4_classic) on the grid odeint steps on (``t`` itself, or built from ``options['step_size']`` or
``options['grid_constructor']`` by the same functions); an output time between grid points is
filled as ``odeint`` fills it by default, by linear interpolation of the two grid states around
it (both then count as outputs of the solve; ``interp="cubic"`` is refused there).

Adaptive ones (dopri5, bosh3, tsit5, dopri8) take odeint's options, ``step_t`` / ``jump_t``
included. Their forward pass is odeint's adaptive solve, unrecorded, keeping its accepted
steps' times and sizes (``solvers/accepted_steps.py``; backprop holds step sizes constant too)
and the states at the ends of its last ``c - 1`` steps: the number of steps is known only when
the solve ends, and the states the schedule stores first lie mostly at the end (all of them for
``n < c``), so those among the kept ones are stored. The backward pass sweeps over the accepted
steps as over a grid, the other states recomputed by the same schedule, each output's gradient
entering at the step whose dense output gave its value. An RHS that draws random numbers
draws, in every retaken evaluation, what the forward solve drew there, rejected attempts in
between notwithstanding (two generator states per accepted step are kept, only when the solve
drew any). fehlberg2 and adaptive_heun, whose steps start from a stage that is not the previous
step's solution (as torchdiffeq's do), and the multistep Adams methods are refused with a
message naming the alternatives ("backprop", "adjoint").
"""

from __future__ import annotations

import bisect
import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from odekern.dispatch import requested_backend, use_requested_backend
from odekern.solvers import checkpoint_schedule as schedule
from odekern.solvers import stages
from odekern.solvers import state as st
from odekern.module_state import forward_tensors, tensors_as_in_forward
from odekern.odeint import build_solver, checked_inputs, flip_time_options, odeint, warn_unsupported_callbacks
from odekern.reachable import differentiable_tensors, distinct_requiring_grad, training_buffers, warn_unreached
from odekern.solvers.base import RHS, Perturb, beside, step_callbacks
from odekern.solvers.checks import (
    check_state,
    check_tolerance,
    raise_non_finite_step,
    raise_non_finite_unrepeated,
    tensor_tuple,
    time_argument,
)
from odekern.solvers.accepted_steps import AcceptedSteps, RecordingRHS, recording_class
from odekern.solvers.adaptive_rk import AdaptiveRK
from odekern.solvers.double_backward import refuse_second_order
from odekern.solvers.explicit_rk import FixedGridRK, RKStepper
from odekern.solvers.fixed_grid import (check_grid_options, check_interp, constructed_grid,
                                        grid_and_values_from_step_size, step_sizes)
from odekern.solvers.norms import GLOBAL
from odekern.solvers.random_state import RandomState, preserved
from odekern.solvers.registry import METHODS

Tensor = torch.Tensor


def check_checkpoints(checkpoints: Any, name: str = "checkpoints") -> int:
    if isinstance(checkpoints, bool) or not isinstance(checkpoints, int) or checkpoints < 1:
        raise ValueError(f"{name} must be an int >= 1 (how many trajectory states the backward pass may "
                         f"hold at once), got {checkpoints!r}")
    return checkpoints


def _is_adaptive(method: str) -> bool:
    return issubclass(METHODS[method], AdaptiveRK)


def checkpointable_methods() -> list[str]:
    """The one-step Runge-Kutta methods, fixed-grid and adaptive (their tableaus' last stage is
    the next step's first, which the replay of accepted steps relies on)."""
    return sorted(name for name, cls in METHODS.items()
                  if issubclass(cls, FixedGridRK) or (issubclass(cls, AdaptiveRK) and cls.tableau.fsal))


def check_method_checkpointable(method: str | None) -> str:
    methods = checkpointable_methods()
    if method not in methods:
        others = sorted(name for name, cls in METHODS.items() if issubclass(cls, AdaptiveRK) and name not in methods)
        raise ValueError(
            f"gradient mode 'checkpoint' replays one-step Runge-Kutta steps; method must be one of "
            f"{methods}, got {method!r}. The multistep (Adams) methods, and the adaptive methods whose "
            f"next step starts from a stage that is not the step's solution ({', '.join(others)}), cannot "
            "be replayed step by step: use gradient='backprop' (exact, memory grows with the steps) or "
            "gradient='adjoint' (memory flat)")
    return method


def _check_options(options: dict) -> None:
    """The options this mode takes, checked as odeint checks them."""
    unsupported = sorted(set(options) - {"step_size", "grid_constructor", "interp", "norm", "perturb", "control"})
    if options.get("control", GLOBAL) != GLOBAL:
        unsupported.append(f"control={options['control']!r}")
    if unsupported:
        raise ValueError(f"gradient mode 'checkpoint' does not support options {unsupported}; "
                         "it accepts 'step_size', 'grid_constructor', 'perturb' and 'interp' (and "
                         "ignores 'norm' and control='global', which mean nothing on a fixed grid)")
    check_grid_options(options.get("step_size"), options.get("grid_constructor"))
    check_interp(options.get("interp", "linear"))


def _check_adaptive_options(options: dict) -> None:
    """The options of an adaptive method this mode refuses (odeint checks the others)."""
    if options.get("control", GLOBAL) != GLOBAL:
        raise ValueError(f"gradient mode 'checkpoint' does not support options['control']={options['control']!r}: "
                         "it replays one solve's accepted steps; use gradient='backprop'")
    if options.get("on_max_steps", "raise") == "return":
        raise ValueError("gradient mode 'checkpoint' does not support options['on_max_steps']='return' (a partial "
                         "solution and its status); a solve that exceeds max_num_steps raises")


def _step_grid(func: Callable, y0: st.State, t: Tensor, t_vals: list[float],
               options: dict) -> tuple[Tensor, list[float]]:
    """The step grid as a tensor and as Python floats (``t_vals``: ``t`` as floats), as odeint's
    fixed-grid solve builds it (from checked options)."""
    step, constructor = options.get("step_size"), options.get("grid_constructor")
    if step is None and constructor is None:
        return t, t_vals
    # odeint solves a decreasing t as the increasing -t (with a sign-flipping RHS, and the
    # constructor's grid negated); build the identical grid there, then turn it back.
    sign = -1.0 if _decreasing(t_vals) else 1.0
    times, values = sign * t, [sign * v for v in t_vals]
    if step is not None:
        grid, values = grid_and_values_from_step_size(times, float(step), values)
    else:
        solver_options = {"grid_constructor": constructor}
        if sign < 0:
            flip_time_options(solver_options)
        grid, values = constructed_grid(solver_options["grid_constructor"], RHS(func, sign), y0, times, values)
    return sign * grid, [sign * v for v in values]


def _grid_and_outputs(func: Callable, y0: st.State, t: Tensor,
                      options: dict) -> tuple[Tensor, list[float], list[tuple[int, bool]]]:
    """The step grid (a tensor and its values) and where each output time lies on it
    (``_output_positions``); refuses cubic interpolation between grid points."""
    t_vals = t.tolist()
    grid, grid_vals = _step_grid(func, y0, t, t_vals, options)
    positions = _output_positions(t_vals, grid_vals) if len(t_vals) > 1 else [(0, False)]
    if options.get("interp") == "cubic" and any(between for _, between in positions):
        raise ValueError("gradient mode 'checkpoint' fills output times between grid points by linear "
                         "interpolation only; options['interp']='cubic' needs every output time on the "
                         "step grid (a step_size that divides the output intervals), or use "
                         "gradient='backprop'")
    return grid, grid_vals, positions


def _decreasing(values: list[float]) -> bool:
    return len(values) > 1 and values[-1] < values[0]


def _output_positions(t_vals: list[float], grid_vals: list[float]) -> list[tuple[int, bool]]:
    """Where each output time lies on the step grid, as odeint's fixed-grid loop places it:
    ``(i, False)`` on grid point ``i``, ``(i, True)`` strictly between points ``i`` and
    ``i + 1``. On Python floats: a tensor read per output time would be a device sync each."""
    sign = -1.0 if _decreasing(grid_vals) else 1.0
    ascending = [sign * g for g in grid_vals]  # the grid is strictly monotonic
    positions = []
    for tj in t_vals:
        # The first grid point at or past t_j (the grid starts at t[0] and ends at t[-1]): t_j's
        # own, or the end of the step t_j lies in.
        k = min(bisect.bisect_left(ascending, sign * tj), len(ascending) - 1)
        positions.append((k, False) if ascending[k] == sign * tj else (k - 1, True))
    return positions


def _grid_nodes(positions: list[tuple[int, bool]]) -> list[int]:
    """The grid points whose states the outputs are read from, in order."""
    return sorted({n for i, between in positions for n in ((i, i + 1) if between else (i,))})


def _outputs_between_nodes(replay: _Replay, t: Tensor, positions: list[tuple[int, bool]],
                           nodes: list[int], node_states: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The solution at the output times from the states at the grid ``nodes``: a point's own
    state, or between two points the linear interpolation odeint's fixed-grid loop forms there
    (with the same weight, ``(t_j - t_i) / dt_i`` in the solver's time), recorded by autograd."""
    times = -t if replay.reverse else t
    row_of = {n: k for k, n in enumerate(nodes)}
    solutions = []
    for sol in node_states:
        rows = []
        for j, (i, between) in enumerate(positions):
            y_i = sol[row_of[i]]
            if between:
                theta = (times[j] - replay.points[i]) / replay.dts[i]
                y_i = stages.lerp(y_i, sol[row_of[i + 1]], theta)
            rows.append(y_i)
        solutions.append(torch.stack(rows))
    return tuple(solutions)


class _Replay:
    """Steps of the solve, recorded or not, as ``odeint``'s fixed-grid loop takes them."""

    def __init__(self, func, grid: Tensor, grid_vals: list[float], nodes: list[int], checkpoints: int,
                 method: str, params, perturb: bool = False):
        self.nodes = nodes
        self.checkpoints, self.method, self.params = checkpoints, method, params
        self.perturb = perturb
        # odeint solves a decreasing t as the increasing -t with a sign-flipping RHS; so do we.
        self.reverse = reverse = _decreasing(grid_vals)
        times = -grid if reverse else grid
        self.values = [-v for v in grid_vals] if reverse else list(grid_vals)
        # As odeint's fixed-grid loop: the points as 0-dim tensors (what func receives) and the
        # step sizes as Python floats, read once (a read per step is a device sync per step).
        self.points = times.unbind()
        self.dts = step_sizes(times, self.values)
        self.rhs = RHS(func, -1.0 if reverse else 1.0)
        self.tableau = METHODS[method].tableau

    def step(self, i: int, y: st.State) -> tuple[st.State, list]:
        """The state at node ``i + 1`` from ``y`` at node ``i``, recorded when grad is enabled,
        and no outputs inside the step (those between nodes are interpolated outside)."""
        stepper = RKStepper(self.tableau, y, reuse_buffers=False)
        return self._step(stepper, i, y, None), []

    def _step(self, stepper: RKStepper, i: int, y: st.State, out) -> st.State:
        """Step ``i`` as FixedGridRK takes it (``perturb`` included)."""
        t0, t1 = self.points[i], self.points[i + 1]
        f0 = self.rhs(t0, y, Perturb.NEXT if self.perturb else Perturb.NONE)
        t_end = beside(t1, st.first(y).dtype, -1) if self.perturb else None
        return stepper.step(self.rhs, t0, self.dts[i], t1, y, f0, out=out, t_end_stages=t_end)[0]

    def advance(self, i0: int, y: st.State, i1: int, callbacks: bool = False) -> st.State:
        """The state at node ``i1`` from ``y`` at node ``i0``, unrecorded, in a new tensor, its
        values unchecked (``check_finite``). ``callbacks``: call ``func.callback_step`` before
        each step (the forward pass does; the backward pass's recomputations do not, so the user
        sees each step once).

        Memory: besides the result, one scratch state (the steps alternate between it and the
        result so that the last lands in the result) and one step's stage values, all freed on
        return: nothing stays allocated between the recorded steps of the backward pass. Stage
        inputs are fresh tensors rather than reused buffers so that only the live ones exist.
        """
        if i1 == i0:
            return y
        return self._advance(i0, y, i1, callbacks, checked=False)

    def check_finite(self, i0: int, y: st.State, i1: int, result: st.State) -> None:
        """Raises NonFiniteError when ``result``, the state at node ``i1`` reached from ``y`` at
        ``i0``, holds a NaN/inf. Only ``result`` is read (a NaN/inf never leaves the state once
        in it, as in ``FixedGridSolver._locate_non_finite``): the forward pass checks its final
        state once, so no step reads a value (a device sync on a GPU), and the backward pass's
        recomputations, which repeat the forward's steps exactly, are not checked again. When
        ``result`` is not finite the steps are taken again, each checked, up to the one that
        went bad, which the error names."""
        if st.all_finite(result):
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._advance(i0, y, i1, callbacks=False, checked=True)  # raises
        raise_non_finite_unrepeated(self.method, self.rhs.user_time(self.values[i0]),
                                    self.rhs.user_time(self.values[i1]))

    def _advance(self, i0: int, y: st.State, i1: int, callbacks: bool, checked: bool) -> st.State:
        """``advance``'s steps; ``checked``: raise NonFiniteError at the first step whose state is
        not finite, naming it."""
        with torch.no_grad():
            stepper = RKStepper(self.tableau, y, reuse_buffers=False)
            result = st.empty_like(y)
            scratch = st.empty_like(y) if i1 - i0 > 1 else None
            for i in range(i0, i1):
                out = result if (i1 - 1 - i) % 2 == 0 else scratch
                if callbacks:  # the step as a tensor, as odeint hands it
                    self.rhs.callback("callback_step", self.points[i], y, self.points[i + 1] - self.points[i])
                y_next = self._step(stepper, i, y, out)
                for part, value in zip(st.components(out), st.components(y_next)):
                    if value is not part:  # a stage function may hand back a fresh tensor
                        part.copy_(value)
                del y_next
                if checked and not st.all_finite(out):
                    raise_non_finite_step(self.method, self.rhs.user_time(self.values[i]),
                                          self.rhs.user_time(self.values[i + 1]))
                y = out
            return result


class _Backward:
    """Reverse sweep over the steps with at most ``checkpoints`` stored states (see module doc).

    ``replay`` takes step ``i`` (``step(i, y) -> (y_next, [(row, output) inside the step])``,
    recorded) and several unrecorded (``advance(i0, y, i1)``); ``output_grads[i]`` maps the rows
    of the outputs inside step ``i`` to their gradients, ``node_grads[i]`` is the gradient of
    the state at node ``i`` itself."""

    def __init__(self, replay: Any, params: Sequence[Tensor], node_grads: dict[int, st.State],
                 stored: dict[int, tuple[st.State, RandomState]],
                 output_grads: dict[int, dict[int, st.State]] | None = None):
        self.replay = replay
        self.params = params
        self.node_grads = node_grads
        self.output_grads = output_grads or {}
        # States the forward pass kept for the schedule's first sweep, with the generators' there.
        self.stored = stored
        self.param_grads: list[Tensor | None] = [None] * len(params)
        self.adjoint: st.State | None = None  # d loss / d state at the node the sweep has reached

    def vjp_step(self, i: int, y_i: st.State, rng_i: RandomState | None) -> None:
        """Turns ``self.adjoint`` at node ``i + 1`` into the adjoint at node ``i``; accumulates
        parameter gradients. ``rng_i``: the generators' state at node ``i`` (None where the
        replay's steps set the generators themselves, as ``AcceptedSteps`` does)."""
        params = self.params
        if rng_i is not None:
            rng_i.restore()
        with torch.enable_grad():
            y = st.map_state(lambda c: c.detach().requires_grad_(), y_i)
            y_next, outputs = self.replay.step(i, y)
            a_next, self.adjoint = self.adjoint, None
            n_parts = len(st.components(y))
            row_grads = self.output_grads.get(i, {})
            roots = [*st.components(y_next), *(c for _, value in outputs for c in st.components(value))]
            cotangents = [*st.components(a_next), *(c for row, _ in outputs for c in st.components(row_grads[row]))]
            grads = torch.autograd.grad(roots, (*st.components(y), *params), cotangents, allow_unused=True)
        del y, y_next, a_next, outputs, roots, cotangents
        for p, g in enumerate(grads[n_parts:]):
            if g is not None:
                self.param_grads[p] = g if self.param_grads[p] is None else self.param_grads[p] + g
        a = st.rebuild(y_i, (g if g is not None else torch.zeros_like(c)
                             for g, c in zip(grads[:n_parts], st.components(y_i))))
        del grads
        extra = self.node_grads.get(i)
        self.adjoint = a if extra is None else st.map_state(torch.add, a, extra)

    def state_at(self, i0: int, y0: st.State, rng0: RandomState | None,
                 i: int) -> tuple[st.State, RandomState | None]:
        """The state at node ``i`` and the generators' state there, from those at ``i0`` (None
        throughout where the replay sets the generators itself)."""
        stored = self.stored.pop(i, None)
        if stored is not None:
            return stored
        if i == i0:
            return y0, rng0
        if rng0 is None:
            return self.replay.advance(i0, y0, i), None
        rng0.restore()
        y = self.replay.advance(i0, y0, i)
        return y, RandomState(st.first(y).device)

    def sweep(self, i0: int, y0: st.State, rng0: RandomState | None, i1: int, slots: int) -> None:
        """Turns ``self.adjoint`` at node ``i1`` into the adjoint at node ``i0``, given the state
        ``y0`` and the generators' state ``rng0`` at ``i0``, holding ``y0`` plus at most
        ``slots - 1`` further states. (The adjoint is an attribute, not an argument: a recursion
        frame must not keep an old one alive.)"""
        n = i1 - i0
        if n == 1:
            self.vjp_step(i0, y0, rng0)
        elif slots <= 1:
            for i in range(i1 - 1, i0 - 1, -1):
                self.vjp_step(i, *self.state_at(i0, y0, rng0, i))
        else:
            m = i0 + schedule.split(n, slots)
            y_m, rng_m = self.state_at(i0, y0, rng0, m)
            self.sweep(m, y_m, rng_m, i1, slots - 1)
            del y_m, rng_m
            self.sweep(i0, y0, rng0, m, slots)


_NO_SECOND_ORDER = ("gradient mode 'checkpoint' (odeint_checkpointed) cannot differentiate its gradient "
                    "(double backward, create_graph=True): its steps are recorded one at a time and "
                    "dropped; use gradient='backprop' (odeint) for gradients of gradients")


class _CheckpointedSolve(torch.autograd.Function):
    """Inputs ``(replay, is_tuple, n_parts, *state components, *params)``; one solution (rows =
    the grid points ``replay.nodes``) per state component."""

    @staticmethod
    def forward(ctx, replay: _Replay, is_tuple: bool, n_parts: int, *inputs: Tensor) -> tuple[Tensor, ...]:
        y0 = tuple(inputs[:n_parts]) if is_tuple else inputs[0]
        nodes = sorted(set(replay.nodes))
        last = nodes[-1]
        first_sweep = schedule.first_sweep(last, replay.checkpoints)
        states = {nodes[0]: y0}
        device = st.first(y0).device
        # The generators' state at each node the backward pass restarts from, so that an RHS
        # drawing random numbers (dropout) draws the same ones when its steps are retaken.
        rngs = {nodes[0]: RandomState(device)}
        y, at = y0, nodes[0]
        for b in sorted(set(nodes[1:]) | set(first_sweep)):
            y = states[b] = replay.advance(at, y, b, callbacks=True)
            if b in first_sweep:
                rngs[b] = RandomState(device)
            at = b
        replay.check_finite(nodes[0], y0, at, y)
        ctx.replay = replay
        # backward() runs after any use_backend(...) or autocast block has exited: remember
        # both, so that its replays and recorded steps compute what this forward pass did.
        ctx.backend = requested_backend()
        ctx.autocast = _autocast_state(device)
        ctx.module_tensors = forward_tensors(replay.rhs.func)
        ctx.stored = {i: (states[i], rngs[i]) for i in first_sweep}
        ctx.rng0 = rngs[nodes[0]]
        ctx.is_tuple = is_tuple
        # The parameters too, though backward reads them through func: autograd then refuses a
        # backward after one was changed in place (an optimizer step between forward and
        # backward), as it does for backprop, instead of recomputing with the new values.
        ctx.save_for_backward(*inputs)
        ctx.n_parts = n_parts
        solution = st.new_solution(y0, len(replay.nodes))
        for j, node in enumerate(replay.nodes):
            st.store(solution, j, None, states[node])
        return st.components(solution)

    @staticmethod
    def backward(ctx, *grad_solutions: Tensor | None):
        replay: _Replay = ctx.replay
        saved = ctx.saved_tensors  # once: torch.utils.checkpoint around a solve unpacks each once
        y0, grad_solutions = _saved_state_and_gradients(ctx, saved, grad_solutions, len(replay.nodes))
        stored, ctx.stored = ctx.stored, {}
        node_grads: dict[int, st.State] = {}
        for j, node in enumerate(replay.nodes):
            g = st.rebuild(y0, (gs[j] for gs in grad_solutions))
            node_grads[node] = g if node not in node_grads else st.map_state(torch.add, node_grads[node], g)
        last = max(replay.nodes)
        a_last = node_grads.get(last, st.map_state(torch.zeros_like, y0))
        no_grads = (None, None, None)
        if last == 0:
            grads = refuse_second_order((*st.components(a_last), *([None] * len(replay.params))), saved,
                                        _NO_SECOND_ORDER)
            return (*no_grads, *grads)
        sweeper = _Backward(replay, replay.params, {k: v for k, v in node_grads.items() if k != last}, stored)
        sweeper.adjoint = a_last
        del stored, a_last
        with _as_in_forward(ctx, replay.rhs.func, st.first(y0).device):
            sweeper.sweep(0, y0, ctx.rng0, last, replay.checkpoints)
        grads = refuse_second_order((*st.components(sweeper.adjoint), *sweeper.param_grads), saved, _NO_SECOND_ORDER)
        return (*no_grads, *grads)


class _CheckpointedAdaptiveSolve(torch.autograd.Function):
    """Inputs ``(build, t, checkpoints, is_tuple, n_parts, *state components, *params)``:
    ``build(y0)`` makes the recording solver, ``t`` the output times in its time. One solution
    (a row per output time) per state component.

    The forward pass is the adaptive solve itself, unrecorded, keeping its accepted steps
    (``solvers/accepted_steps.py``) and the end states of the last ``checkpoints - 1`` of them;
    the backward pass sweeps over those steps as over a fixed grid's, each output time's gradient
    entering at the step whose dense output gave its value. Of the kept states it holds those
    that its schedule stores first (``first_sweep``; the number of steps is known only when the
    solve ends): with fewer steps than checkpoints, all of them, so that it retakes no step
    unrecorded."""

    @staticmethod
    def forward(ctx, build: Callable, t: Tensor, checkpoints: int, is_tuple: bool, n_parts: int,
                *inputs: Tensor) -> tuple[Tensor, ...]:
        y0 = tuple(inputs[:n_parts]) if is_tuple else inputs[0]
        device = st.first(y0).device
        solver = build(y0)
        solver.keep_last = checkpoints - 1
        solution, _ = solver.integrate(t)
        ctx.steps = AcceptedSteps(solver)
        first_sweep = set(schedule.first_sweep(len(ctx.steps), checkpoints))
        ctx.stored = {i: (y, None) for i, y in solver.kept if i in first_sweep}
        ctx.params = inputs[n_parts:]
        ctx.checkpoints, ctx.is_tuple, ctx.n_parts = checkpoints, is_tuple, n_parts
        ctx.backend = requested_backend()
        ctx.autocast = _autocast_state(device)
        ctx.module_tensors = forward_tensors(solver.rhs.func)
        ctx.save_for_backward(*inputs)  # as _CheckpointedSolve: a changed input is refused
        return st.components(solution)

    @staticmethod
    def backward(ctx, *grad_solutions: Tensor | None):
        steps: AcceptedSteps = ctx.steps
        n_rows = 1 + sum(len(rows) for rows in steps.outputs_in_step.values())
        saved = ctx.saved_tensors  # once, as in _CheckpointedSolve.backward
        y0, grad_solutions = _saved_state_and_gradients(ctx, saved, grad_solutions, n_rows)

        def row(j: int) -> st.State:
            return st.rebuild(y0, (g[j] for g in grad_solutions))

        no_grads = (None,) * 5
        if len(steps) == 0:  # a single output time: the solution is y0
            return (*no_grads, *refuse_second_order((*st.components(row(0)), *([None] * len(ctx.params))), saved,
                                                    _NO_SECOND_ORDER))
        output_grads = {k: {j: row(j) for j, _ in rows} for k, rows in steps.outputs_in_step.items()}
        stored, ctx.stored = ctx.stored, {}
        sweeper = _Backward(steps, ctx.params, {0: row(0)}, stored, output_grads)
        del stored
        sweeper.adjoint = st.map_state(torch.zeros_like, y0)  # nothing is read at the last step's end itself
        with _as_in_forward(ctx, steps.rhs.func, st.first(y0).device):
            sweeper.sweep(0, y0, None, len(steps), ctx.checkpoints)  # the steps set the generators
        grads = refuse_second_order((*st.components(sweeper.adjoint), *sweeper.param_grads), saved, _NO_SECOND_ORDER)
        return (*no_grads, *grads)


# Run eagerly inside a compiled caller: an adaptive solve's steps depend on its values, so no
# graph can hold it, and Dynamo would otherwise compile the recording solve and the replays frame
# by frame, recompiling as their step counts change (at its recompilation limit within one solve).
# torch._disable_dynamo is torch.compiler.disable applied at the first call (the same graph break):
# the public decorator imports torch._dynamo with this module, a second added to `import odekern`.
# The name is private, but torch.library's custom ops are built on it too.
@torch._disable_dynamo
def _solve_adaptive(func: Callable, y0: st.State, t: Tensor, checkpoints: int, rtol: Any, atol: Any, method: str,
                    options: dict, params: tuple[Tensor, ...]) -> st.State:
    """``odeint_checkpointed`` for an adaptive method, on inputs to differentiate."""
    method, y0, t, _, options, reverse, callbacks = checked_inputs(func, y0, t, rtol, atol, method, options)
    if st.numel(y0) == 0:
        return odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options)  # nothing to store
    solver_cls = recording_class(METHODS[method])

    def build(y0_: st.State) -> AdaptiveRK:
        return build_solver(func, y0_, rtol, atol, method, dict(options), reverse, callbacks=callbacks,
                            rhs_cls=RecordingRHS, solver_cls=solver_cls)

    parts = st.components(y0)
    solutions = _CheckpointedAdaptiveSolve.apply(build, -t if reverse else t, checkpoints, st.is_tuple(y0),
                                                 len(parts), *parts, *params)
    return st.rebuild(y0, solutions)


def _saved_state_and_gradients(ctx, saved: Sequence[Tensor], grad_solutions: Sequence[Tensor | None],
                               n_rows: int) -> tuple[st.State, list[Tensor]]:
    """``y0`` from a checkpointed Function's saved inputs (``saved``: its ``ctx.saved_tensors``),
    and the gradients of its ``n_rows``-row solutions with zeros for a component the loss did not
    use."""
    parts = saved[:ctx.n_parts]
    y0 = tuple(parts) if ctx.is_tuple else parts[0]
    return y0, [g if g is not None else torch.zeros(n_rows, *c.shape, dtype=c.dtype, device=c.device)
                for g, c in zip(grad_solutions, parts)]


@contextlib.contextmanager
def _as_in_forward(ctx, func: Callable, device: torch.device) -> Iterator[None]:
    """What a checkpointed backward pass runs under: the backend and autocast settings its
    forward pass had (``ctx.backend``, ``ctx.autocast``), the tensors ``func`` held in it
    (``ctx.module_tensors``: a ``torch.func.functional_call`` has returned by now), the
    generators and the training-mode buffers of ``func`` left as they were before it."""
    with contextlib.ExitStack() as modes:
        modes.enter_context(tensors_as_in_forward(func, ctx.module_tensors))
        modes.enter_context(_buffers_kept(func))
        modes.enter_context(preserved(device))
        modes.enter_context(use_requested_backend(ctx.backend))
        for device_type, enabled, dtype, cache in ctx.autocast:
            modes.enter_context(torch.autocast(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache))
        yield


@contextlib.contextmanager
def _buffers_kept(func: Callable) -> Iterator[None]:
    """The buffers of ``func``'s modules in training mode are, after the block, what they were
    before it: the backward pass runs ``func`` again, and a BatchNorm in training mode would
    otherwise update its running statistics once more per retaken step (backprop's backward
    runs no module). Modules in eval mode are left alone: they update nothing, and a write would
    move the version of a buffer some recorded graph saved (an eval-mode BatchNorm's)."""
    kept = [(b, b.clone()) for b in training_buffers(func)]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in kept:
                buffer.copy_(value)


def _autocast_state(device: torch.device) -> list[tuple[str, bool, torch.dtype, bool]]:
    """The autocast settings now of the state's device type and of the CPU (which an RHS's
    host-side ops see), to re-enter in backward: autograd runs a Function's backward outside the
    caller's autocast block, and steps recomputed or recorded there at another precision would
    differentiate another trajectory than the forward pass took (not backprop's gradient)."""
    device_types = [d for d in dict.fromkeys((device.type, "cpu")) if torch.amp.is_autocast_available(d)]
    return [(d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d), torch.is_autocast_cache_enabled())
            for d in device_types]


def _differentiated_tensors(func: Callable, adjoint_params: Sequence[Tensor] | None) -> tuple[Tensor, ...]:
    """The tensors the backward pass differentiates besides ``y0``, each once. Without
    ``adjoint_params``: ``func``'s parameters and every tensor requiring grad it reaches, so the
    gradient is backpropagation's even for a tensor that is not a registered parameter (left
    out, it would silently get none: the autograd graph of the recorded steps is never joined
    to the caller's)."""
    if adjoint_params is None:
        return differentiable_tensors(func)
    given = tensor_tuple(adjoint_params, "odeint_checkpointed: adjoint_params")
    warn_unreached(func, given, "odeint_checkpointed", "gradient mode 'checkpoint'")
    return distinct_requiring_grad(given)


def odeint_checkpointed(func: Callable, y0: st.State, t: Tensor | Sequence[float], *, checkpoints: int,
                        rtol: Any = 1e-7, atol: Any = 1e-9, method: str | None = "rk4",
                        options: dict | None = None,
                        adjoint_params: Sequence[Tensor] | None = None) -> st.State:
    """``odeint(func, y0, t, ...)`` whose backward recomputes steps from at most ``checkpoints``
    stored states: exact discrete gradients, memory flat in the number of steps.

    ``method``: one of ``checkpointable_methods()``, fixed-grid (``options``: ``step_size``,
    ``grid_constructor``, ``perturb``, ``interp``) or adaptive (odeint's options and tolerances,
    but not ``control="per_sample"`` or ``on_max_steps="return"``).

    ``t``: a 1-D tensor or, as for ``odeint``, a list or tuple of Python numbers.
    Gradients flow to ``y0`` and to ``adjoint_params``, not to ``t``. By default, as with
    backpropagation, to every tensor requiring grad that ``func`` uses: its parameters and any
    tensor it reaches (a plain attribute such as a conditioning tensor computed by another
    module, a closure's tensor; ``odekern.reachable``). An explicit ``adjoint_params`` limits
    the gradient to those tensors, with a warning naming each reachable one left out.

    Inside torch.func transforms (grad, jacrev, jvp, vmap) the solve is ``odeint``'s, whose
    derivatives are exactly these, without the memory bound; so it is when nothing is
    differentiated (``torch.no_grad()``, no input requiring grad), with no backward to prepare.
    """
    checkpoints = check_checkpoints(checkpoints)
    method = check_method_checkpointable(method)
    adaptive = _is_adaptive(method)
    if isinstance(y0, list):
        y0 = tuple(y0)
    # Its values are read where they are solved: by odeint (without a backward pass, and for an
    # adaptive method) or before the fixed-grid checkpointed solve. A read here would also break
    # a compiled block's graph in inference.
    check_state(y0, finite=False)
    t, t_values, _ = time_argument(t, y0)
    check_tolerance(rtol, "rtol")  # unused by fixed grids; checked as odeint does
    check_tolerance(atol, "atol")
    if t.requires_grad:
        raise ValueError("gradient mode 'checkpoint' does not differentiate with respect to t; "
                         "pass t without requires_grad or use gradient='backprop'")
    options = dict(options or {})
    if adaptive:
        _check_adaptive_options(options)
    else:
        _check_options(options)
    if adjoint_params is None and not torch.is_grad_enabled() and not st.inside_transform():
        params = ()  # nothing can be recorded: no search of func for the tensors it reaches
    else:
        params = _differentiated_tensors(func, adjoint_params)
    parts = st.components(y0)
    if st.inside_transform() or not st.records_derivatives([*parts, *params]):
        # Inside a torch.func transform (grad, jacrev, jvp, vmap) or a forward-mode AD level the
        # recomputing backward cannot run (torch.func differentiates through the function's
        # forward); odeint takes the same steps with the same arithmetic, so its derivatives are
        # exactly the checkpointed ones (the memory bound does not hold there). With nothing to
        # differentiate (torch.no_grad(), inference) there is no backward pass to prepare for:
        # odeint's solve, with its reused buffers, is the same solve. odeint builds the grid; it
        # is built here too only where interp='cubic' has to be checked against it, so that this
        # mode refuses without a backward pass what it refuses with one.
        if options.get("interp") == "cubic" and not adaptive:
            _grid_and_outputs(func, y0, t, options)
        # Times given as numbers stay numbers: odeint then reads no tensor for its grid.
        times = t if t_values is None else t_values
        return odeint(func, y0, times, rtol=rtol, atol=atol, method=method, options=options)
    if adaptive:
        return _solve_adaptive(func, y0, t, checkpoints, rtol, atol, method, options, params)
    return _solve_fixed_grid(func, y0, t, checkpoints, method, options, params)


# Run eagerly inside a compiled caller (a graph break here): the backward pass differentiates
# each retaken step with torch.autograd.grad, which no graph can hold, so Dynamo would compile
# the solve frame by frame (its grid reads, the forward loop, the replays: ~20 graphs and as many
# seconds for an 8-step rk4 block), and the fragments ran slower than the eager solve.
@torch._disable_dynamo
def _solve_fixed_grid(func: Callable, y0: st.State, t: Tensor, checkpoints: int, method: str, options: dict,
                      params: tuple[Tensor, ...]) -> st.State:
    """``odeint_checkpointed`` for a fixed-grid method, on inputs to differentiate."""
    check_state(y0)
    grid, grid_vals, positions = _grid_and_outputs(func, y0, t, options)
    nodes = _grid_nodes(positions)
    warn_unsupported_callbacks(step_callbacks(func), method, METHODS[method].CALLBACKS)
    replay = _Replay(func, grid, grid_vals, nodes, checkpoints, method, params,
                     perturb=bool(options.get("perturb", False)))
    parts = st.components(y0)
    solutions = _CheckpointedSolve.apply(replay, st.is_tuple(y0), len(parts), *parts, *params)
    if any(between for _, between in positions):
        solutions = _outputs_between_nodes(replay, t, positions, nodes, solutions)
    return st.rebuild(y0, solutions)
