"""An adaptive Runge-Kutta solve that records the steps it accepted, and those steps taken again.

A recomputing gradient (gradient mode "checkpoint", ``odekern/checkpoint.py``) differentiates an
adaptive solve as backprop does: the accepted steps, each a Runge-Kutta step of a step size held
constant (the step size control is not differentiated, ``docs/migrating-from-torchdiffeq.md``),
and the dense output at the output times. So the forward solve, run without a graph, keeps per
accepted step only what taking it again needs: its times, its size, whether it lands on or
leaves a ``jump_t`` point, and the random number generators' state where its evaluations of
``func`` were made (rejected attempts and the initial step selection draw from them too, so the
generators cannot be replayed from the solve's start). ``AcceptedSteps.step`` then takes step
``i`` from its start state with the same arithmetic: bit for bit the accepted state and
interpolated outputs of the forward solve, recorded by autograd when grad is enabled. (A solve
whose evaluations drew no random numbers keeps no generator states.)

The solve may also keep the end states of its latest accepted steps (``keep_last``): a
backward pass that would store some of them first, before reversing any step, then starts from
those instead of retaking the steps up to them.

The first stage of a step is the last stage of the one before (first same as last): the
forward solve evaluated it once, at the end of the previous step; taken again, each of the two
steps evaluates it, with the generators as they were for that one evaluation.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
from typing import Any

import torch

from odekern.solvers import interpolation, state
from odekern.solvers.adaptive_rk import AdaptiveRK
from odekern.solvers.base import RHS, Perturb, beside
from odekern.solvers.explicit_rk import RKStepper
from odekern.solvers.random_state import RandomState

Tensor = torch.Tensor


@dataclasses.dataclass(frozen=True)
class AcceptedStep:
    """One accepted step, as the solver took it (times in the solver's time, which runs forward)."""

    t0: Tensor  # 0-dim, the solver's time dtype
    t1: Tensor
    t1_value: float  # t1 as the solver's control flow holds it
    dt: float
    leaves_jump: bool  # the step starts on a jump_t point: its first stage sees func just after t0
    lands_on_jump: bool  # the step was shortened onto a jump_t point: its c = 1 stages see func just before t1
    # The generators where the first stage was evaluated, and where the step's other stages
    # were; None when the solve drew no random numbers.
    rng_first_stage: RandomState | None
    rng_other_stages: RandomState | None


class RecordingRHS(RHS):
    """``RHS`` noting the generators' state before each evaluation."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.generators_before: list[RandomState] = []

    def __call__(self, t: Any, y: state.State, perturb: Perturb = Perturb.NONE) -> state.State:
        self.generators_before.append(RandomState(state.first(y).device))
        return super().__call__(t, y, perturb)


class _Recording:
    """Mixed into an ``AdaptiveRK`` class: ``integrate`` also fills ``self.accepted`` (one
    ``AcceptedStep`` per accepted step, in order) and ``self.output_steps`` (per output time after
    the first, the index of the accepted step its value is interpolated in), and ``self.kept``
    with ``(i, state before step i)`` for the ``keep_last`` latest accepted steps' end states
    (copies: the solver writes its next states into the same buffers)."""

    rhs: RecordingRHS
    keep_last = 0

    def integrate(self, t: Tensor, t_values: Any = None):
        self.accepted: list[AcceptedStep] = []
        self.kept: collections.deque = collections.deque(maxlen=self.keep_last)
        self.output_times = t.to(self.time_dtype)
        before = RandomState(state.first(self.y0).device)
        solution, status = super().integrate(t, t_values)
        if before.same_as(RandomState(before.device)):
            # Nothing drew random numbers: the steps need no generator states (memory stays
            # flat in the number of steps) and taking them again sets none.
            self.accepted = [dataclasses.replace(s, rng_first_stage=None, rng_other_stages=None)
                             for s in self.accepted]
        # odeint interpolates output i in the first accepted step ending at or past it.
        ends = [s.t1_value for s in self.accepted]
        self.output_steps = [bisect.bisect_left(ends, v) for v in self.output_times.tolist()[1:]]
        return solution, status

    def _start(self, t0: Tensor):
        self.rhs.generators_before.clear()
        s = super()._start(t0)
        self._next_first_stage = (self.rhs.generators_before[0], False)  # f(t0, y0) is evaluated first
        return s

    def _landing_point(self, t0f: float, t1f: float) -> tuple[float, bool]:
        self._landing = super()._landing_point(t0f, t1f)
        return self._landing

    def _attempt(self, s, device: torch.device) -> None:
        t0, accepted_before = s.t, s.n_accepted
        self.rhs.generators_before.clear()
        super()._attempt(s, device)
        if s.n_accepted == accepted_before:
            return
        evaluations = self.rhs.generators_before
        rng_first, leaves_jump = self._next_first_stage
        lands_on_jump = self._landing[1]
        self.accepted.append(AcceptedStep(t0, s.t, s.tf, s.last_dt, leaves_jump, lands_on_jump, rng_first,
                                          evaluations[0]))
        if self.keep_last:
            self.kept.append((len(self.accepted), state.map_state(torch.clone, s.y)))
        # The next step's first stage: this step's last evaluation (its last stage, or after a
        # jump_t point func evaluated just past it).
        self._next_first_stage = (evaluations[-1], lands_on_jump)


@functools.cache  # one class per method, not one per solve
def recording_class(solver_cls: type) -> type:
    """``solver_cls`` (an ``AdaptiveRK`` class) recording its accepted steps; build it with a
    ``RecordingRHS``."""
    if not (isinstance(solver_cls, type) and issubclass(solver_cls, AdaptiveRK)):
        raise TypeError(f"recording_class needs an adaptive Runge-Kutta solver class, got {solver_cls!r}")
    if not solver_cls.tableau.fsal:
        # AdaptiveRK takes a step's first stage from the previous step's last one.
        raise ValueError(f"method {solver_cls.tableau.name!r}: its tableau is not first-same-as-last")
    return type(f"Recording{solver_cls.__name__}", (_Recording, solver_cls), {})


class AcceptedSteps:
    """The accepted steps of a recorded solve, taken again from given states."""

    def __init__(self, solver: AdaptiveRK):
        self.steps: list[AcceptedStep] = solver.accepted
        self.tableau = solver.tableau
        self.dense = solver.dense
        # Output i + 1 lies in step output_steps[i]; its time as the solver's integrate held it.
        self.outputs_in_step: dict[int, list[tuple[int, Tensor]]] = {}
        for j, k in enumerate(solver.output_steps, start=1):
            self.outputs_in_step.setdefault(k, []).append((j, solver.output_times[j]))
        self.rhs = RHS(solver.rhs.func, solver.rhs.time_sign)

    def __len__(self) -> int:
        return len(self.steps)

    def step(self, i: int, y: state.State, outputs: bool = True) -> tuple[state.State, list[tuple[int, Any]]]:
        """``(state after step i, [(output row, value) for the outputs inside step i])`` from the
        state ``y`` before it (outputs only when ``outputs``); recorded when grad is enabled. The
        generators are set as they were for each evaluation, and left as after the last."""
        s = self.steps[i]
        stepper = RKStepper(self.tableau, y, reuse_buffers=False, carry_last_stage=True)
        if s.rng_first_stage is not None:
            s.rng_first_stage.restore()
        f0 = self.rhs(s.t0, y, Perturb.NEXT if s.leaves_jump else Perturb.NONE)
        if s.rng_other_stages is not None:
            s.rng_other_stages.restore()
        t_end = beside(s.t1, state.first(y).dtype, -1) if s.lands_on_jump else None
        y1, ks = stepper.step(self.rhs, s.t0, s.dt, s.t1, y, f0, out=None, t_end_stages=t_end)
        inside = self.outputs_in_step.get(i, []) if outputs else []
        if not inside:
            return y1, []
        coeffs = self.dense.fit(y, y1, ks, s.dt)
        return y1, [(j, interpolation.evaluate(coeffs, s.t0, s.t1, t_j)) for j, t_j in inside]

    def advance(self, i0: int, y: state.State, i1: int) -> state.State:
        """The state after step ``i1 - 1`` from ``y`` before step ``i0``, unrecorded."""
        with torch.no_grad():
            for i in range(i0, i1):
                y = self.step(i, y, outputs=False)[0]
        return y
