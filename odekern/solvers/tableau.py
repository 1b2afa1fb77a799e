"""Butcher tableaus as checked, immutable data.

A Runge-Kutta method is fully described by its tableau; the stepping code in ``explicit_rk.py``
and ``adaptive_rk.py`` never hard-codes a method. Coefficients are held as exact fractions so
the consistency conditions below are checked exactly (floats are accepted and compared with a
small tolerance), and converted to Python floats once for the hot loop.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from fractions import Fraction

Number = int | float | str | Fraction

# Floats given as coefficients are compared with this slack; exact fractions compare exactly.
_CHECK_SLACK = Fraction(1, 10**13)


def _frac(x: Number) -> Fraction:
    return x if isinstance(x, Fraction) else Fraction(x)


def _fracs(xs: Sequence[Number]) -> tuple[Fraction, ...]:
    return tuple(_frac(x) for x in xs)


def _close(x: Fraction, y: Fraction) -> bool:
    return abs(x - y) <= _CHECK_SLACK


@dataclasses.dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta method.

    Stage ``i`` is evaluated at ``t0 + c[i] * dt`` on ``y0 + dt * sum_j a[i][j] * k_j`` (row ``i``
    of ``a`` has exactly ``i`` entries: the method is explicit). The step's solution is
    ``y0 + dt * sum_j b[j] k_j``. Optional parts:

    - ``b_err``: weights of the embedded error estimate ``dt * sum_j b_err[j] k_j`` (the
      difference of two solutions, so its weights sum to zero).
    - ``b_mid``: weights giving the dense-output value at the step's midpoint,
      ``y0 + dt * sum_j b_mid[j] k_j`` (consistent only if they sum to 1/2); the dense output is
      then the quartic through that midpoint (``interpolation.py``).
    - ``b_dense``: a method's own continuous extension, which takes precedence over ``b_mid``:
      row ``p - 1`` holds the stage weights of ``theta**p``, so the solution at ``t0 + theta dt``
      is ``y0 + dt * sum_p theta**p sum_j b_dense[p - 1][j] k_j`` (at ``theta = 1`` it must be the
      step's solution: the rows sum to ``b``).

    ``fsal`` ("first same as last") is derived: the last stage is evaluated at ``t0 + dt`` on
    exactly the step's solution, so it doubles as the next step's first stage.
    """

    name: str
    order: int
    c: tuple[Fraction, ...]
    a: tuple[tuple[Fraction, ...], ...]
    b: tuple[Fraction, ...]
    b_err: tuple[Fraction, ...] | None = None
    b_mid: tuple[Fraction, ...] | None = None
    b_dense: tuple[tuple[Fraction, ...], ...] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: normalise fields once, here
        set_(self, "c", _fracs(self.c))
        set_(self, "a", tuple(_fracs(row) for row in self.a))
        set_(self, "b", _fracs(self.b))
        if self.b_err is not None:
            set_(self, "b_err", _fracs(self.b_err))
        if self.b_mid is not None:
            set_(self, "b_mid", _fracs(self.b_mid))
        if self.b_dense is not None:
            set_(self, "b_dense", tuple(_fracs(row) for row in self.b_dense))
        self._check()
        # Made here, once per tableau (its fields never change), not lazily: functools'
        # cached_property takes a lock on Python 3.11, which torch.compile cannot trace, so the
        # first solve of a process inside a compiled region would break the graph there.
        set_(self, "_floats", self._make_floats())

    def _fail(self, what: str) -> None:
        raise ValueError(f"ButcherTableau {self.name!r}: {what}")

    def _check(self) -> None:
        s = len(self.c)
        if s < 1:
            self._fail("needs at least one stage (c is empty)")
        if not isinstance(self.order, int) or self.order < 1:
            self._fail(f"order must be a positive int, got {self.order!r}")
        if len(self.a) != s or len(self.b) != s:
            self._fail(f"c, a and b must all have one entry per stage; got len(c)={s}, "
                       f"len(a)={len(self.a)}, len(b)={len(self.b)}")
        for i, row in enumerate(self.a):
            if len(row) != i:
                self._fail(f"row a[{i}] must have exactly {i} entries (explicit method), got {len(row)}")
            if not _close(sum(row, Fraction(0)), self.c[i]):
                self._fail(f"row sum of a[{i}] is {float(sum(row, Fraction(0)))} but c[{i}] = {float(self.c[i])} "
                           "(consistency requires sum_j a[i][j] = c[i])")
        if not _close(sum(self.b, Fraction(0)), Fraction(1)):
            self._fail(f"weights b sum to {float(sum(self.b, Fraction(0)))}, expected 1")
        if self.b_err is not None:
            if len(self.b_err) != s:
                self._fail(f"b_err must have {s} entries, got {len(self.b_err)}")
            if not _close(sum(self.b_err, Fraction(0)), Fraction(0)):
                self._fail(f"error weights b_err sum to {float(sum(self.b_err, Fraction(0)))}, expected 0")
        if self.b_mid is not None:
            if len(self.b_mid) != s:
                self._fail(f"b_mid must have {s} entries, got {len(self.b_mid)}")
            if not _close(sum(self.b_mid, Fraction(0)), Fraction(1, 2)):
                self._fail(f"midpoint weights b_mid sum to {float(sum(self.b_mid, Fraction(0)))}, expected 1/2")
        if self.b_dense is not None:
            if not self.b_dense or any(len(row) != s for row in self.b_dense):
                self._fail(f"b_dense must be a non-empty sequence of rows with {s} entries each")
            at_one = polynomial_weights_at(self.b_dense, Fraction(1))
            for j, (w, bj) in enumerate(zip(at_one, self.b)):
                if not _close(w, bj):
                    self._fail(f"dense output at theta=1 gives weight {float(w)} on stage {j}, but b[{j}] = "
                               f"{float(bj)} (the continuous extension must end at the step's solution)")

    # ------------------------------------------------------------------ derived properties

    @property
    def num_stages(self) -> int:
        return len(self.c)

    @property
    def fsal(self) -> bool:
        s = self.num_stages
        return s > 1 and self.c[-1] == 1 and self.b[-1] == 0 and self.a[-1] == self.b[:-1]

    @property
    def adaptive(self) -> bool:
        return self.b_err is not None

    def floats(self) -> FloatTableau:
        """The coefficients as Python floats, for the stepping loop."""
        return self._floats

    def _make_floats(self) -> FloatTableau:
        # Every solve asks, and converting the fractions costs more than a small solve's step.
        f = lambda xs: tuple(float(x) for x in xs)
        return FloatTableau(
            c=f(self.c), a=tuple(f(r) for r in self.a), b=f(self.b),
            b_err=None if self.b_err is None else f(self.b_err),
            b_mid=None if self.b_mid is None else f(self.b_mid),
            fsal=self.fsal,
        )

    def order_conditions_residual(self, order: int, weights: Sequence[Number] | None = None,
                                  theta: Number = 1) -> float:
        """Largest violation among the Runge-Kutta order conditions up to ``order``.

        One condition per rooted tree ``tau`` with at most ``order`` nodes (Butcher):
        ``sum_i w_i Phi_i(tau) = theta**|tau| / gamma(tau)``, for the weights ``w`` (default
        ``b``) of a solution at ``t0 + theta dt`` (``theta = 1``: the step's solution; other
        weights: an embedded solution or a dense output). Used by the tests to verify each
        tableau really has its claimed orders. Exact for fraction coefficients.
        """
        w = self.b if weights is None else _fracs(weights)
        theta = _frac(theta)
        s = self.num_stages
        a = [[self.a[i][j] if j < i else Fraction(0) for j in range(s)] for i in range(s)]
        weights: dict[tuple, list[Fraction]] = {}  # tree -> Phi_i(tree) per stage

        def phi(tree: tuple) -> list[Fraction]:
            if tree not in weights:
                values = [Fraction(1)] * s
                for child in tree:
                    inner = phi(child)
                    values = [v * sum((aij * x for aij, x in zip(a[i], inner)), Fraction(0))
                              for i, v in enumerate(values)]
                weights[tree] = values
            return weights[tree]

        worst = Fraction(0)
        for n in range(1, order + 1):
            for tree in rooted_trees(n):
                lhs = sum((wi * x for wi, x in zip(w, phi(tree))), Fraction(0))
                worst = max(worst, abs(lhs - theta ** n / tree_density(tree)))
        return float(worst)


def polynomial_weights_at(rows: Sequence[Sequence[Fraction]], theta: Fraction) -> tuple[Fraction, ...]:
    """Stage weights ``sum_p theta**p rows[p - 1][j]`` of a continuous extension at ``theta``."""
    return tuple(sum((row[j] * theta ** (p + 1) for p, row in enumerate(rows)), Fraction(0))
                 for j in range(len(rows[0])))


# A rooted tree is the sorted tuple of its subtrees (a leaf is ``()``): equal trees compare equal.
@functools.cache
def rooted_trees(n: int) -> tuple[tuple, ...]:
    """All rooted trees with ``n`` nodes (1, 1, 2, 4, 9, 20, 48, 115 for n = 1..8)."""
    return ((),) if n == 1 else tuple(sorted(_forests(n - 1)))


@functools.cache
def _forests(n: int) -> frozenset[tuple]:
    """All multisets of rooted trees with ``n`` nodes in total, as sorted tuples."""
    if n == 0:
        return frozenset({()})
    return frozenset(tuple(sorted((tree, *rest)))
                     for k in range(1, n + 1) for tree in rooted_trees(k) for rest in _forests(n - k))


def tree_density(tree: tuple) -> int:
    """Butcher's ``gamma``: the tree's order times the densities of its subtrees."""
    return tree_order(tree) * math.prod(tree_density(child) for child in tree)


def tree_order(tree: tuple) -> int:
    return 1 + sum(tree_order(child) for child in tree)


@dataclasses.dataclass(frozen=True)
class FloatTableau:
    """Plain-float view of a checked ``ButcherTableau`` (built only via ``ButcherTableau.floats``)."""

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_err: tuple[float, ...] | None
    b_mid: tuple[float, ...] | None
    fsal: bool
