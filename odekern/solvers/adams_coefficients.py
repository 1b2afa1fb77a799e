"""Adams-Bashforth / Adams-Moulton coefficients, derived exactly and checked.

An Adams method integrates the polynomial interpolating past slopes over one step. With slopes
at nodes ``s_j`` (in units of the step, relative to the current time ``t_n``), the weight of
node ``j`` is ``integral_0^1 L_j(s) ds`` with ``L_j`` the Lagrange basis polynomial. Bashforth
(explicit) uses nodes ``0, -1, ..., -(k-1)``; Moulton (implicit) adds the new point: ``1, 0, ...,
-(k-2)``. Computing them with exact fractions replaces the usual hand-copied tables.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from functools import cache

MAX_ORDER = 12


def _poly_mul(p: list[Fraction], q: list[Fraction]) -> list[Fraction]:
    out = [Fraction(0)] * (len(p) + len(q) - 1)
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            out[i + j] += a * b
    return out


def quadrature_weights(nodes: tuple[int, ...]) -> tuple[Fraction, ...]:
    """Weights ``w_j`` with ``sum_j w_j p(nodes[j]) = integral_0^1 p`` for polynomials of degree < len(nodes)."""
    weights = []
    for j, sj in enumerate(nodes):
        basis = [Fraction(1)]
        for i, si in enumerate(nodes):
            if i != j:
                basis = _poly_mul(basis, [Fraction(-si, sj - si), Fraction(1, sj - si)])
        weights.append(sum((c / (power + 1) for power, c in enumerate(basis)), Fraction(0)))
    return tuple(weights)


@dataclasses.dataclass(frozen=True)
class AdamsRule:
    """One Adams formula: ``y_{n+1} = y_n + dt * sum_j weights[j] f(t_n + nodes[j] * dt)``."""

    nodes: tuple[int, ...]
    weights: tuple[Fraction, ...]

    def __post_init__(self) -> None:
        if len(self.nodes) != len(self.weights) or not self.nodes:
            raise ValueError(f"AdamsRule: need one weight per node, got {len(self.weights)} weights "
                             f"for {len(self.nodes)} nodes")
        # Exact for every polynomial slope of degree < k: sum_j w_j s_j^p = 1/(p+1). p = 0 is
        # consistency (weights sum to 1); the rest give order k.
        for p in range(len(self.nodes)):
            moment = sum((w * Fraction(s) ** p for w, s in zip(self.weights, self.nodes)), Fraction(0))
            if moment != Fraction(1, p + 1):
                raise ValueError(f"AdamsRule on nodes {self.nodes}: weighted moment of degree {p} is {moment}, "
                                 f"expected 1/{p + 1} (rule not exact for polynomials of degree {p})")
        # Made here, not lazily, as ButcherTableau's floats (a lazy cache would take a lock that
        # torch.compile cannot trace).
        object.__setattr__(self, "_floats", tuple(float(w) for w in self.weights))

    @property
    def order(self) -> int:
        return len(self.nodes)

    def floats(self) -> tuple[float, ...]:
        """The weights as Python floats, made once per rule (every Adams solve asks for all of them)."""
        return self._floats


@cache
def bashforth(k: int) -> AdamsRule:
    """Explicit k-step rule on slopes at ``t_n, t_{n-1}, ..., t_{n-k+1}`` (newest first)."""
    nodes = tuple(-j for j in range(k))
    return AdamsRule(nodes, quadrature_weights(nodes))


@cache
def moulton(k: int) -> AdamsRule:
    """Implicit rule on ``k`` slopes: ``t_{n+1}`` then ``t_n, ..., t_{n-k+2}`` (newest first)."""
    nodes = tuple(1 - j for j in range(k))
    return AdamsRule(nodes, quadrature_weights(nodes))
