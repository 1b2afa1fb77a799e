"""The Runge-Kutta methods odekern ships, as checked tableaus (see ``tableau.py``).

Adding a method = adding a tableau here plus one registry line in ``registry.py``.
"""

from __future__ import annotations

from fractions import Fraction as F

from odekern.solvers.tableau import ButcherTableau

EULER = ButcherTableau(name="euler", order=1, c=(0,), a=((),), b=(1,))

# Explicit midpoint: one half step with Euler, then the full step with the midpoint slope.
MIDPOINT = ButcherTableau(
    name="midpoint", order=2,
    c=(0, F(1, 2)),
    a=((), (F(1, 2),)),
    b=(0, 1),
)

# Heun's second- and third-order methods (torchdiffeq's ``heun2`` / ``heun3``).
HEUN2 = ButcherTableau(name="heun2", order=2, c=(0, 1), a=((), (1,)), b=(F(1, 2), F(1, 2)))
HEUN3 = ButcherTableau(
    name="heun3", order=3,
    c=(0, F(1, 3), F(2, 3)),
    a=((), (F(1, 3),), (0, F(2, 3))),
    b=(F(1, 4), 0, F(3, 4)),
)

# Kutta's 3/8 rule. torchdiffeq's ``rk4`` uses this one (``rk4_alt_step_func``), so odekern's
# ``rk4`` does too and matches it.
RK4_38 = ButcherTableau(
    name="rk4", order=4,
    c=(0, F(1, 3), F(2, 3), 1),
    a=((), (F(1, 3),), (F(-1, 3), 1), (1, -1, 1)),
    b=(F(1, 8), F(3, 8), F(3, 8), F(1, 8)),
)

# The classic RK4 (used by the seed continuous-unet code).
RK4_CLASSIC = ButcherTableau(
    name="rk4_classic", order=4,
    c=(0, F(1, 2), F(1, 2), 1),
    a=((), (F(1, 2),), (0, F(1, 2)), (0, 0, 1)),
    b=(F(1, 6), F(1, 3), F(1, 3), F(1, 6)),
)

# Dormand-Prince 5(4) with the 7th stage at the new solution (FSAL). ``b_err`` is the 5th-order
# minus the embedded 4th-order weights; ``b_mid`` is Shampine's dense output at theta = 1/2
# (the same midpoint torchdiffeq fits its quartic interpolant through).
_DP5_B = (F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), 0)
# The embedded 4th-order weights torchdiffeq uses (not the textbook 5179/57600 set): with
# them odekern's controller sees the same error estimates and takes the same steps.
_DP4_B = (F(1951, 21600), 0, F(22642, 50085), F(451, 720), F(-12231, 42400), F(649, 6300), F(1, 60))
DOPRI5 = ButcherTableau(
    name="dopri5", order=5,
    c=(0, F(1, 5), F(3, 10), F(4, 5), F(8, 9), 1, 1),
    a=(
        (),
        (F(1, 5),),
        (F(3, 40), F(9, 40)),
        (F(44, 45), F(-56, 15), F(32, 9)),
        (F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729)),
        (F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656)),
        _DP5_B[:6],
    ),
    b=_DP5_B,
    b_err=tuple(F(x) - F(y) for x, y in zip(_DP5_B, _DP4_B)),
    b_mid=(F(6025192743, 30085553152) / 2, 0, F(51252292925, 65400821598) / 2,
           F(-2691868925, 45128329728) / 2, F(187940372067, 1594534317056) / 2,
           F(-1776094331, 19743644256) / 2, F(11237099, 235043384) / 2),
)

ALL_TABLEAUS = {t.name: t for t in (EULER, MIDPOINT, HEUN2, HEUN3, RK4_38, RK4_CLASSIC, DOPRI5)}
