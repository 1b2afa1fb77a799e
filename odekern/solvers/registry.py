"""Method name -> solver class. ``odeint`` looks methods up here and nowhere else."""

from __future__ import annotations

from odekern.solvers.adams import AdamsBashforth, AdamsBashforthMoulton
from odekern.solvers.adaptive_rk import AdaptiveHeun, Bosh3, Dopri5, Dopri8, Fehlberg2, Tsit5
from odekern.solvers.explicit_rk import RK4, Euler, Heun2, Heun3, Midpoint, RK4Classic
from odekern.solvers.scipy_solver import ScipySolver

METHODS = {
    "dopri5": Dopri5,
    "euler": Euler,
    "midpoint": Midpoint,
    "rk4": RK4,
    "rk4_classic": RK4Classic,
    "explicit_adams": AdamsBashforth,
    "implicit_adams": AdamsBashforthMoulton,
    # Also in torchdiffeq, so that switching libraries needs no other change:
    "heun2": Heun2,
    "heun3": Heun3,
    "fixed_adams": AdamsBashforthMoulton,  # torchdiffeq's older name for implicit_adams
    "dopri8": Dopri8,
    "bosh3": Bosh3,
    "fehlberg2": Fehlberg2,
    "adaptive_heun": AdaptiveHeun,
    "scipy_solver": ScipySolver,  # scipy.integrate.solve_ivp, forward only
    # Beyond torchdiffeq: Tsitouras 5(4), with dopri5's controller and its own interpolant.
    "tsit5": Tsit5,
}

DEFAULT_METHOD = "dopri5"

ADAPTIVE_METHODS = frozenset(name for name, cls in METHODS.items() if "first_step" in cls.OPTIONS)
