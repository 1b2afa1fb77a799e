"""Reference formulations of the networks' ODE parts, solved by torchdiffeq (the authors' library).

Each wrapper takes the odekern module already inside a model and re-solves the *same* ODE with
the *same* weights (it holds the original module, so parameter order and identity carry over
to a deep copy), so a test can compare outputs and gradients of two otherwise identical models.
"""

from __future__ import annotations

import torch
import torchdiffeq
from torch import nn


class TorchdiffeqSecondOrder(nn.Module):
    """Stands in for ``DynamicBlock.ode`` (an order-2 ``odekern.ODEBlock`` returning its state).

    Solves ``z' = [v, f_a(t, x, v)]`` from ``z0 = [x, g(x)]`` with ``torchdiffeq.odeint`` (or
    ``odeint_adjoint``), the authors' formulation of a second-order block.
    """

    def __init__(self, block, adjoint: bool = False):
        super().__init__()
        self.inner = block
        self.adjoint = adjoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = self.inner
        accel = block.dynamics.func
        g = block.velocity_init
        channels = x.shape[1]

        def rhs(t, z):
            pos, vel = z[:, :channels], z[:, channels:]
            return torch.cat([vel, accel(t, pos, vel)], dim=1)

        z0 = torch.cat([x, g(x)], dim=1)
        t = block.t.to(dtype=x.dtype)
        options = dict(block.options)
        if self.adjoint:
            holder = _RHSModule(rhs, accel)
            out = torchdiffeq.odeint_adjoint(holder, z0, t, rtol=block.rtol, atol=block.atol, method=block.method,
                                             options=options, adjoint_params=tuple(accel.parameters()))
        else:
            out = torchdiffeq.odeint(rhs, z0, t, rtol=block.rtol, atol=block.atol, method=block.method,
                                     options=options)
        return out[-1]


class _RHSModule(nn.Module):
    def __init__(self, rhs, owner: nn.Module):
        super().__init__()
        self.rhs = rhs
        self.owner = owner

    def forward(self, t, z):
        return self.rhs(t, z)


def nmode_gamma_and_conv(nmode: nn.Module) -> tuple[nn.Parameter, nn.Conv2d]:
    """The [1, C, H, W] gamma and the 3x3 conv C of an ``odekern.NmODE`` (found by shape / type)."""
    convs = [m for m in nmode.modules() if isinstance(m, nn.Conv2d)]
    gammas = [p for n, p in nmode.named_parameters(recurse=False) if p.dim() == 4]
    assert len(convs) == 1 and len(gammas) == 1, "NmODE must own one Conv2d and one 4-D gamma"
    return gammas[0], convs[0]


def solve_nmode(gamma, conv, y0, t1, method, rtol, atol, adjoint, options=None, return_f=False):
    """y(t1) (and f at t0, t1) of ``dy/dt = -y + sin^2(y + conv(gamma))`` by torchdiffeq."""
    g = conv(gamma)
    field = _NmodeField(g)
    t = torch.tensor([0.0, t1], dtype=y0.dtype)
    solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
    extra = {"adjoint_params": (g,)} if adjoint else {}
    y1 = solve(field, y0, t, rtol=rtol, atol=atol, method=method, options=dict(options or {}), **extra)[-1]
    if not return_f:
        return y1
    return y1, field(t[0], y0), field(t[-1], y1)


class _NmodeField(nn.Module):
    def __init__(self, g: torch.Tensor):
        super().__init__()
        self.g = g

    def forward(self, t, y):
        return -y + torch.sin(y + self.g) ** 2


class TorchdiffeqNmODE(nn.Module):
    """Stands in for ``CNMBlock.nmode``: ``dy/dt = -y + sin^2(y + C(gamma))`` on [0, t1] by torchdiffeq.

    ``forward(y0, return_f=False)`` mirrors ``odekern.NmODE``: ``y1`` or ``(y1, f0, f1)``.
    Gradient: ``odeint_adjoint`` (the authors' call) when ``adjoint`` else backprop through
    torchdiffeq's solver.
    """

    def __init__(self, nmode: nn.Module, t1: float, method: str = "dopri5", rtol: float = 1e-7,
                 atol: float = 1e-9, adjoint: bool = True, options: dict | None = None):
        super().__init__()
        self.inner = nmode
        self.t1, self.method, self.rtol, self.atol, self.adjoint = t1, method, rtol, atol, adjoint
        self.options = options or {}

    def forward(self, y0: torch.Tensor, return_f: bool = False):
        gamma, conv = nmode_gamma_and_conv(self.inner)
        return solve_nmode(gamma, conv, y0, self.t1, self.method, self.rtol, self.atol, self.adjoint,
                           self.options, return_f)
