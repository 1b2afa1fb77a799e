"""Small ODE problems shared by the solver tests (not collected: no ``test_`` prefix)."""

from __future__ import annotations

import torch
from torch import nn

from odekern.testing import randn

FIXED_METHODS = ["euler", "midpoint", "rk4", "rk4_classic", "explicit_adams", "implicit_adams"]
SHARED_METHODS = ["dopri5", "euler", "midpoint", "rk4", "explicit_adams", "implicit_adams"]  # also in torchdiffeq
ALL_METHODS = ["dopri5", *FIXED_METHODS]
ORDERS = {"euler": 1, "midpoint": 2, "rk4": 4, "rk4_classic": 4, "explicit_adams": 4, "implicit_adams": 4}


class Counting:
    """Wraps an RHS and counts its evaluations (the step-count measure on both libraries)."""

    def __init__(self, func):
        self.func = func
        self.n = 0

    def __call__(self, t, y):
        self.n += 1
        return self.func(t, y)


class LinearODE(nn.Module):
    """dy/dt = y A^T (rows of y are samples); exact y(t) = y0 expm((t - t0) A)^T."""

    def __init__(self, n: int = 3, dtype=torch.float64, seed: int = 1, scale: float = 0.5):
        super().__init__()
        self.A = nn.Parameter(randn(n, n, dtype=dtype, seed=seed, scale=scale))

    def forward(self, t, y):
        return y @ self.A.T

    def exact(self, y0, t):
        A = self.A.detach().double()
        return torch.stack([y0.double() @ torch.linalg.matrix_exp((ti - t[0]).double() * A).T for ti in t])


class MLPODE(nn.Module):
    """A small non-autonomous neural RHS (tanh MLP scaled by cos t)."""

    def __init__(self, n: int, hidden: int = 7, dtype=torch.float64, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter((torch.randn(hidden, n, generator=g, dtype=torch.float64) / n ** 0.5).to(dtype))
        self.b1 = nn.Parameter((torch.randn(hidden, generator=g, dtype=torch.float64) * 0.1).to(dtype))
        self.w2 = nn.Parameter((torch.randn(n, hidden, generator=g, dtype=torch.float64) / hidden ** 0.5).to(dtype))

    def forward(self, t, y):
        return torch.tanh(y @ self.w1.T + self.b1) @ self.w2.T * torch.cos(t)
