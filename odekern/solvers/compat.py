"""torchdiffeq's own names, for messages that must read exactly as torchdiffeq's do.

Code written for torchdiffeq filters or tests its warnings by text (e.g. ``"RK4: Unexpected
arguments"``), so a method's warnings name the torchdiffeq solver class it replaces.
"""

from __future__ import annotations

TORCHDIFFEQ_CLASS_NAMES = {
    "dopri5": "Dopri5Solver",
    "dopri8": "Dopri8Solver",
    "bosh3": "Bosh3Solver",
    "fehlberg2": "Fehlberg2",
    "adaptive_heun": "AdaptiveHeunSolver",
    "tsit5": "Tsit5Solver",  # not in torchdiffeq 0.2.5: named in its style
    "euler": "Euler",
    "midpoint": "Midpoint",
    "heun2": "Heun2",
    "heun3": "Heun3",
    "rk4": "RK4",
    "rk4_classic": "RK4Classic",  # odekern only
    "explicit_adams": "AdamsBashforth",
    "implicit_adams": "AdamsBashforthMoulton",
    "fixed_adams": "AdamsBashforthMoulton",
    "scipy_solver": "ScipyWrapperODESolver",
}


def solver_class_name(method: str) -> str:
    """The torchdiffeq class name a warning about ``method`` starts with."""
    return TORCHDIFFEQ_CLASS_NAMES.get(method, method)
