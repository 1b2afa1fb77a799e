"""``method="scipy_solver"``: ``scipy.integrate.solve_ivp`` behind odekern's solver protocol.

It behaves as torchdiffeq's ``scipy_solver``, so code that uses it runs unchanged:

- ``options["solver"]`` is solve_ivp's ``method`` (default ``"LSODA"``); ``rtol``, ``atol``,
  ``min_step`` and ``max_step`` are passed on as torchdiffeq passes them (solve_ivp warns, as it
  does under torchdiffeq, that ``min_step`` has no effect on solvers other than LSODA);
  ``norm``, ``grid_points`` and ``eps`` are accepted and ignored;
- the state travels to NumPy (CPU, float64 inside SciPy) and every RHS call receives ``t`` and
  ``y`` in the state's dtype and on its device, evaluated without autograd; the solution comes
  back in the state's dtype and device;
- forward only: nothing is recorded for autograd (a warning says so when a gradient was
  expected). ``odeint_adjoint`` computes gradients with its own backward solve.

Beyond torchdiffeq: a tuple state is solved as one flat system and returned as a tuple; a failed
solve_ivp (its ``success`` False) raises ``RuntimeError`` with SciPy's message instead of
returning fewer rows than output times; atol 0 where y0 is 0 is refused (solve_ivp's step
selection can loop forever on its 0/0 error scale); bfloat16 states work (SciPy sees float64). A complex
state is integrated in the complex domain, as torchdiffeq does (SciPy sees complex128).

SciPy is imported when a solver is made, not with odekern: it is not among odekern's
requirements (only torchdiffeq-parity users need it), and importing scipy.integrate costs about
a third of a second that every ``import odekern`` would otherwise pay.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from odekern._warnings import warn_caller
from odekern.solvers import state
from odekern.solvers.base import RHS, Solver, SolveStatus
from odekern.solvers.checks import zero_error_scale
from odekern.solvers.controllers import error_scale_has_zero

Tensor = torch.Tensor

SCIPY_OPTIONS = frozenset({"solver", "min_step", "max_step", "norm", "control", "grid_points", "eps"})


def _flat_numpy(x: Any, like: state.State) -> Any:
    """A tolerance as solve_ivp takes it: a float stays a float; a tensor (or one entry per
    component of a tuple state) becomes one float64 value per state element."""
    if isinstance(x, tuple):
        return np.concatenate([np.broadcast_to(np.asarray(_flat_numpy(v, c), dtype=np.float64), (c.numel(),))
                               for v, c in zip(x, like)])
    if isinstance(x, Tensor):
        if x.numel() == 1:
            return float(x)
        c = state.first(like)
        return x.detach().to("cpu", torch.float64).expand(c.shape).reshape(-1).numpy().copy()
    return float(x)


class ScipySolver(Solver):
    """torchdiffeq's ``scipy_solver``: forward-only ``scipy.integrate.solve_ivp``."""

    OPTIONS = SCIPY_OPTIONS

    def __init__(self, rhs: RHS, y0: state.State, rtol: Any, atol: Any, *, method: str, norm: Any = None,
                 solver: str = "LSODA", min_step: float = 0, max_step: float = math.inf,
                 grid_points: Any = None, eps: Any = None):
        super().__init__(rhs, y0, rtol, atol, method=method)
        try:
            from scipy.integrate import solve_ivp
        except ImportError as error:
            raise ImportError("odeint(method='scipy_solver') runs scipy.integrate.solve_ivp, and SciPy is not "
                              "installed: pip install scipy (or use an odekern method, e.g. 'dopri5')") from error
        self._solve_ivp = solve_ivp
        if state.inside_vmap():
            raise ValueError("odeint(method='scipy_solver') cannot run under torch.func transforms "
                             "(the state goes to NumPy); use an odekern method instead")
        self.solver = solver
        self.min_step, self.max_step = min_step, max_step
        self._parts = state.components(y0)
        # SciPy integrates a complex state in the complex domain (RK45, RK23, DOP853, BDF; the
        # others refuse it with a ValueError): a complex state must not be cast to float64.
        self._flat_dtype = torch.complex128 if self._parts[0].is_complex() else torch.float64
        self._flat_y0 = self._flat(self._parts)
        self._sizes = [p.numel() for p in self._parts]

    def _flat(self, parts: tuple[Tensor, ...]) -> np.ndarray:
        """``parts`` as one flat NumPy vector of SciPy's dtype (float64 or complex128)."""
        return np.concatenate([p.detach().to("cpu", self._flat_dtype).reshape(-1).numpy() for p in parts])

    def _unflatten(self, flat: Tensor, lead: tuple[int, ...]) -> state.State:
        """Rows of ``flat`` (``[*lead, n]``, float64 or complex128 CPU) as the state's components
        (all real or all complex: a tuple state's components share one dtype)."""
        pieces = torch.split(flat, self._sizes, dim=-1)
        return state.rebuild(self.y0, (piece.reshape((*lead, *p.shape)).to(p.device, p.dtype)
                                       for piece, p in zip(pieces, self._parts)))

    def _numpy_rhs(self, t: float, y: np.ndarray) -> np.ndarray:
        like = state.first(self.y0)
        tt = torch.tensor(t, dtype=torch.float64, device=like.device)
        with torch.no_grad():
            dy = self.rhs(tt, self._unflatten(torch.from_numpy(np.asarray(y, dtype=self._flat_y0.dtype)), ()))
        return self._flat(state.components(dy))

    def integrate(self, t: Tensor, t_values: Any = None) -> tuple[state.State, SolveStatus]:
        if torch.is_grad_enabled() and any(p.requires_grad for p in self._parts):
            warn_caller("odeint(method='scipy_solver') is forward only: no gradient flows to y0 or to "
                        "func's parameters through it (use odekern.odeint_adjoint, or an odekern method, "
                        "for gradients)")
        tv = t.detach().to("cpu", torch.float64).numpy()
        if len(tv) == 1:
            solution = self._unflatten(torch.from_numpy(self._flat_y0)[None], (1,))
            return solution, SolveStatus(True, "single output time", self.rhs.user_time(tv[0]), 1, 0.0)
        if error_scale_has_zero(self.y0, self.rtol, self.atol):
            raise zero_error_scale("scipy_solver", self.rhs.user_time(tv[0]))
        sol = self._solve_ivp(self._numpy_rhs, t_span=[tv.min(), tv.max()], y0=self._flat_y0, t_eval=tv,
                              method=self.solver, rtol=_flat_numpy(self.rtol, self.y0),
                              atol=_flat_numpy(self.atol, self.y0), min_step=self.min_step,
                              max_step=self.max_step)
        if not sol.success or sol.y.shape[1] != len(tv):
            reached = self.rhs.user_time(sol.t[-1]) if len(sol.t) else self.rhs.user_time(tv[0])
            raise RuntimeError(f"odeint(method='scipy_solver'): scipy.integrate.solve_ivp(method={self.solver!r}) "
                               f"failed after the output time t={reached:.6g}: {sol.message}")
        solution = self._unflatten(torch.from_numpy(np.ascontiguousarray(sol.y.T)), (len(tv),))
        return solution, SolveStatus(True, str(sol.message), self.rhs.user_time(tv[-1]), len(tv), 0.0,
                                     nfe=int(sol.nfev))
