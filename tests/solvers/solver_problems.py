"""Small ODE problems shared by the solver tests (not collected: no ``test_`` prefix)."""

from __future__ import annotations

import torch
from torch import nn

from odekern.testing import assert_close, randn

FIXED_METHODS = ["euler", "midpoint", "rk4", "rk4_classic", "explicit_adams", "implicit_adams"]
SHARED_METHODS = ["dopri5", "euler", "midpoint", "rk4", "explicit_adams", "implicit_adams"]  # also in torchdiffeq
ALL_METHODS = ["dopri5", *FIXED_METHODS]
ORDERS = {"euler": 1, "midpoint": 2, "rk4": 4, "rk4_classic": 4, "explicit_adams": 4, "implicit_adams": 4}
# Adaptive methods beyond dopri5: torchdiffeq's, then tsit5 (not in torchdiffeq).
TORCHDIFFEQ_ADAPTIVE = ["dopri8", "bosh3", "fehlberg2", "adaptive_heun"]
NEW_ADAPTIVE = [*TORCHDIFFEQ_ADAPTIVE, "tsit5"]


class Counting:
    """Wraps an RHS and counts its evaluations (the step-count measure on both libraries)."""

    def __init__(self, func):
        self.func = func
        self.n = 0

    def __call__(self, t, y):
        self.n += 1
        return self.func(t, y)


class Decay(nn.Module):
    """dy/dt = -rate y with a learnable rate (1): a module, as odeint_adjoint's func must be."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        self.rate = nn.Parameter(torch.tensor(1.0, dtype=dtype))

    def forward(self, t, y):
        return -self.rate * y


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


class StiffishODE(nn.Module):
    """dy/dt = y A^T with eigenvalues of A from -1 to -40 (an explicit method's steps are then
    bounded by stability, not accuracy), plus a non-autonomous forcing."""

    def __init__(self, dtype=torch.float64, seed: int = 4):
        super().__init__()
        q, _ = torch.linalg.qr(randn(3, 3, dtype=torch.float64, seed=seed))
        a = q @ torch.diag(torch.tensor([-1.0, -12.0, -40.0], dtype=torch.float64)) @ q.T
        self.A = nn.Parameter(a.to(dtype))
        self.b = nn.Parameter(torch.tensor([0.5, -0.3, 0.2], dtype=dtype))

    def forward(self, t, y):
        return y @ self.A.T + self.b * torch.sin(3 * t)


class TupleOscillator(nn.Module):
    """A damped, forced oscillator on a tuple state (x, v) of different shapes' worth of rows."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        self.damping = nn.Parameter(torch.tensor(0.3, dtype=dtype))
        self.w = nn.Parameter(torch.tensor([1.0, 1.7], dtype=dtype))

    def forward(self, t, state):
        x, v = state
        return v, -self.w ** 2 * x - self.damping * v + 0.1 * torch.cos(t)


class TanhField(nn.Module):
    """tanh(W y + b + shift) cos t on 3 features in float64, seeded; ``shift`` is a buffer, so
    the module holds both kinds of tensors."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(3, 3, dtype=torch.float64)
        self.register_buffer("shift", torch.full((3,), 0.1, dtype=torch.float64))

    def forward(self, t, y):
        return torch.tanh(self.layer(y) + self.shift) * torch.cos(t)


def weighted_grads(solution, leaves, seed=99):
    """Gradients with respect to ``leaves`` of a fixed random weighting of ``solution`` (a
    tensor or a tuple of tensors): every entry of the solution reaches the loss."""
    parts = solution if isinstance(solution, tuple) else (solution,)
    loss = sum((p * randn(*p.shape, dtype=p.dtype, seed=seed + k)).sum() for k, p in enumerate(parts))
    return torch.autograd.grad(loss, leaves)


def assert_backprops(got, ref, leaves):
    """``got`` and its gradients with respect to ``leaves`` are ``ref``'s (backprop's)."""
    for a, b in zip(got if isinstance(got, tuple) else (got,), ref if isinstance(ref, tuple) else (ref,)):
        assert_close(a, b)
    for g, r in zip(weighted_grads(got, leaves), weighted_grads(ref, leaves)):
        assert_close(g, r)
