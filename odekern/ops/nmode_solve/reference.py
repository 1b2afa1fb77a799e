"""Pure-PyTorch reference of ``nmode_solve``: the spec every backend is tested against.

Plain differentiable torch, float64-safe, no tricks: the RHS is ``-y + sin(y + g)**2`` with
torch's own ``sin`` (independent of the kernels' polynomial), stages are written from the
Butcher tableaus, and the step-size decisions follow torchdiffeq's dopri5 line by line. The
exact gradient is autograd through the solve with the step sizes held constant; the adjoint
gradient integrates the augmented system ``[y, a_y, a_g]`` backwards.

Implements the backend contract documented in ``config.py`` (``forward`` / ``backward`` on
flat tensors, element ``e`` using ``g[e % G]``).
"""

from __future__ import annotations

import math

import torch

from odekern.ops.nmode_solve import coefficients, failures, global_control
from odekern.ops.nmode_solve.config import NmodeConfig, fixed_grid_steps
from odekern.solvers import controllers as ctl

DOPRI5 = coefficients.of("dopri5")
DENSE = coefficients.DOPRI5_DENSE_QUARTIC
# The controller's exponent 1/5: dopri5's order for the step factor, its embedded order + 1 for
# the initial step (torchdiffeq's choices; both are 5 here).
STEP_EXPONENT = 1.0 / DOPRI5.order


def rhs(y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The nmODE right-hand side f(y) = -y + sin^2(y + g) (cnm-unet Eq. 1)."""
    return -y + torch.sin(y + g) ** 2


def adjoint_rhs(x, g):
    """Augmented system in reversed time tau = t1 - t: x = (y, a_y, a_g)."""
    y, a, _ = x
    s2 = torch.sin(2 * (y + g))
    return (-rhs(y, g), a * (s2 - 1), a * s2)


def dense_weights(theta):
    """torchdiffeq's dopri5 dense output at fraction theta of a step, as stage weights.

    theta may be a float or a tensor (one value per element)."""
    powers = (theta, theta * theta, theta * theta * theta, theta * theta * theta * theta)
    w_y1, w_mid, w_f0, w_f1 = (sum(c * p for c, p in zip(DENSE[name], powers) if c != 0.0)
                               for name in ("y1", "mid", "f0", "f1"))
    w = [w_y1 * DOPRI5.b[j] + w_mid * DOPRI5.mid[j] for j in range(DOPRI5.stages)]
    w[0] = w[0] + w_f0
    w[6] = w[6] + w_f1
    return w


def _rk_stages(fn, x, dt, method):
    """Stages k_j (each a tuple like x) of one explicit RK step from state tuple x."""
    a = coefficients.of(method).a
    ks = []
    for i in range(len(a)):
        xi = tuple(xd + dt * sum(a[i][j] * ks[j][d] for j in range(i) if a[i][j] != 0.0)
                   if i > 0 else xd for d, xd in enumerate(x))
        ks.append(fn(xi))
    return ks


def _combine(x, dt, ks, w):
    return tuple(xd + dt * sum(w[j] * ks[j][d] for j in range(len(ks))) for d, xd in enumerate(x))


def solve_list(fn, x, dts, theta, method):
    """Fixed sequence of steps dts (float); the last one at dense-output fraction theta."""
    b = coefficients.of(method).b
    for i, dt in enumerate(dts):
        ks = _rk_stages(fn, x, dt, method)
        w = dense_weights(theta) if (method == "dopri5" and i == len(dts) - 1 and theta != 1.0) else b
        x = _combine(x, dt, ks, w)
    return x


def _optimal_step(dt, ratio):
    """torchdiffeq's _optimal_step_size (order 5), elementwise on float64 tensors."""
    dfactor = torch.where(ratio < 1, torch.ones_like(ratio), torch.full_like(ratio, ctl.DFACTOR))
    factor = torch.clamp(ctl.SAFETY / ratio ** STEP_EXPONENT, max=ctl.IFACTOR)
    factor = torch.maximum(factor, dfactor).clamp(max=ctl.IFACTOR)
    return torch.where(ratio == 0, dt * ctl.IFACTOR, dt * factor)


def _initial_step(fn, x, f0, rtol, atol, norm):
    scale = [atol + xd.abs() * rtol for xd in x]
    d0 = norm([xd / s for xd, s in zip(x, scale)])
    d1 = norm([fd / s for fd, s in zip(f0, scale)])
    h0 = torch.where((d0 < ctl.INITIAL_NORM_FLOOR) | (d1 < ctl.INITIAL_NORM_FLOOR),
                     torch.full_like(d0, ctl.INITIAL_TINY_STEP), ctl.INITIAL_STEP_FRACTION * d0 / d1)
    x1 = tuple(xd + h0.to(xd.dtype) * fd for xd, fd in zip(x, f0))
    f1 = fn(x1)
    d2 = norm([(a - b) / s for a, b, s in zip(f1, f0, scale)]) / h0
    small = (d1 <= ctl.INITIAL_FLAT_FLOOR) & (d2 <= ctl.INITIAL_FLAT_FLOOR)
    h1 = torch.where(small, torch.maximum(torch.full_like(h0, ctl.INITIAL_TINY_STEP), h0 * ctl.INITIAL_FLAT_SHRINK),
                     (ctl.INITIAL_STEP_FRACTION / torch.maximum(d1, d2)) ** STEP_EXPONENT)
    return torch.minimum(ctl.INITIAL_MAX_GROWTH * h0, h1)


def _rms(parts):
    return torch.stack([p.detach().double().pow(2).mean().sqrt() for p in parts]).max()


def _elementwise_max(parts):
    return torch.stack([p.detach().double().abs() for p in parts]).amax(0)


class _ReferencePasses:
    """The passes of global control (global_control.GlobalPasses) in plain torch."""

    def __init__(self, y0, g, rtol, atol):
        self.fn = lambda x: (rhs(x[0], g),)  # noqa: E731
        self.rtol, self.atol = rtol, atol
        self.x = (y0,)
        self.f0 = self.fn(self.x)
        self.scale = [atol + rtol * xd.abs() for xd in self.x]
        self.candidate = None

    def initial_norms(self):
        return (float(_rms([xd / s for xd, s in zip(self.x, self.scale)])),
                float(_rms([fd / s for fd, s in zip(self.f0, self.scale)])))

    def initial_change(self, h0):
        x1 = tuple(xd + torch.tensor(h0, dtype=torch.float64).to(xd.dtype) * fd for xd, fd in zip(self.x, self.f0))
        return float(_rms([(a - b) / s for a, b, s in zip(self.fn(x1), self.f0, self.scale)]))

    def attempt(self, dt, finishing, theta):
        ks = _rk_stages(self.fn, self.x, dt, "dopri5")
        self.candidate = _combine(self.x, dt, ks, DOPRI5.b)
        err = dt * sum(DOPRI5.err[j] * ks[j][0] for j in range(DOPRI5.stages))
        tol = self.atol + self.rtol * torch.maximum(self.x[0].abs(), self.candidate[0].abs())
        return float(_rms([err / tol]))

    def accept(self):
        self.x = self.candidate


@torch.no_grad()
def global_step_sequence(y0, g, t_span, rtol, atol, max_num_steps):
    """torchdiffeq's dopri5 step sequence on the whole tensor: (dts, n_rejected, theta)."""
    return global_control.global_dopri5(_ReferencePasses(y0, g, rtol, atol), 0.0, t_span, max_num_steps)


def solve_per_element(fn, x, t_span, rtol, atol, max_num_steps, attempt_counts=None):
    """dopri5 where every element has its own step size (norm = max over the state tuple's
    components at that element), torchdiffeq's algorithm per element, masked; differentiable
    in x with step sizes held constant. ``attempt_counts`` (optional, an integer tensor shaped
    like x's components) is incremented by each element's number of attempted steps."""
    f = fn(x)
    h = _initial_step(fn, x, f, rtol, atol, _elementwise_max).detach()
    t = torch.zeros_like(h)
    done = torch.zeros(h.shape, dtype=torch.bool, device=h.device)
    out = x
    b = DOPRI5.b
    attempts = 0
    while not bool(done.all()):
        if attempts >= max_num_steps:
            raise failures.PER_ELEMENT_TOO_MANY_STEPS.exception(max_num_steps=max_num_steps)
        attempts += 1
        if attempt_counts is not None:
            attempt_counts += ~done
        dt = h
        dtc = dt.to(x[0].dtype)
        ks = _rk_stages(fn, x, dtc, "dopri5")
        x1 = _combine(x, dtc, ks, b)
        err = [dtc * sum(DOPRI5.err[j] * ks[j][d] for j in range(DOPRI5.stages)) for d in range(len(x))]
        ratio = _elementwise_max([e / (atol + rtol * torch.maximum(a.abs(), c.abs()))
                                  for e, a, c in zip(err, x, x1)])
        if bool(torch.isnan(ratio).any()):
            raise failures.PER_ELEMENT_NON_FINITE.exception()
        accept = (ratio <= 1) & ~done
        t_next = t + dt
        finishing = accept & (t_next >= t_span)
        theta = torch.where(finishing, (t_span - t) / (t_next - t), torch.ones_like(t)).to(x[0].dtype)
        xf = _combine(x, dtc, ks, dense_weights(theta))
        out = tuple(torch.where(finishing, a, o) for a, o in zip(xf, out))
        move = accept & ~finishing
        x = tuple(torch.where(move, a, o) for a, o in zip(x1, x))
        f = tuple(torch.where(move, a, o) for a, o in zip(ks[6], f))  # noqa: F841 (FSAL == fn(x))
        t = torch.where(move, t_next, t)
        done = done | finishing
        h = torch.where(done, h, _optimal_step(dt, ratio))
    return out


def _expand_g(g, n):
    return g.repeat(n // g.numel()) if g.numel() else g


def _solve(y0, gf, t0, t1, cfg: NmodeConfig, stats=None):
    """y(t1) for flat y0 and per-element gf; stats (global control) fixes the dt sequence."""
    fn = lambda x: (rhs(x[0], gf),)  # noqa: E731
    if not cfg.adaptive:
        return solve_list(fn, (y0,), fixed_grid_steps(t0, t1, cfg.step_size, cfg.max_num_steps), 1.0, cfg.method)[0], None
    if cfg.control == "global":
        if stats is None:
            dts, n_rej, theta = global_step_sequence(y0.detach(), gf.detach(), t1 - t0, cfg.rtol,
                                                     cfg.atol, cfg.max_num_steps)
            stats = torch.tensor([len(dts), n_rej, theta, *dts], dtype=torch.float64)
        n = int(stats[0])
        dts, theta = stats[3:3 + n].tolist(), float(stats[2])
        return solve_list(fn, (y0,), dts, theta, "dopri5")[0], stats
    y1 = solve_per_element(fn, (y0,), t1 - t0, cfg.rtol, cfg.atol, cfg.max_num_steps)[0]
    return y1, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)


def forward(y0, g, t0, t1, cfg: NmodeConfig, need_f: bool):
    gf = _expand_g(g, y0.numel())
    if y0.numel() == 0:
        dts = fixed_grid_steps(t0, t1, cfg.step_size, cfg.max_num_steps) if not cfg.adaptive else []
        return y0.clone(), y0.new_empty(0), y0.new_empty(0), torch.tensor([len(dts), 0, 1.0, *dts], dtype=torch.float64)
    y1, stats = _solve(y0, gf, t0, t1, cfg)
    if not cfg.adaptive:
        dts = fixed_grid_steps(t0, t1, cfg.step_size, cfg.max_num_steps)
        stats = torch.tensor([len(dts), 0.0, 1.0, *dts], dtype=torch.float64)
    f0 = rhs(y0, gf) if need_f else y0.new_empty(0)
    f1 = rhs(y1, gf) if need_f else y0.new_empty(0)
    return y1, f0, f1, stats


def backward(grad_y1, grad_f0, grad_f1, y0, g, y1, stats, t0, t1, cfg: NmodeConfig):
    if y0.numel() == 0:
        return torch.zeros_like(y0), torch.zeros_like(g)
    if cfg.gradient == "checkpoint":
        # torch.func.vjp: works inside a custom op's body, where the autograd keys are excluded.
        fixed = stats if cfg.adaptive and cfg.control == "global" else None

        def outputs(y0r, gr):
            gf = _expand_g(gr, y0.numel())
            y1, _ = _solve(y0r, gf, t0, t1, cfg, fixed)
            return y1, rhs(y0r, gf), rhs(y1, gf)

        _, vjp = torch.func.vjp(outputs, y0.detach(), g.detach())
        zero = torch.zeros_like(y0)
        return vjp((grad_y1, grad_f0 if grad_f0 is not None else zero,
                    grad_f1 if grad_f1 is not None else zero))
    return _adjoint_backward(grad_y1, grad_f0, grad_f1, y0, g, y1, t0, t1, cfg)


@torch.no_grad()
def _adjoint_backward(grad_y1, grad_f0, grad_f1, y0, g, y1, t0, t1, cfg):
    gf = _expand_g(g, y0.numel())
    a = grad_y1.clone()
    ag = torch.zeros_like(y0)
    if grad_f1 is not None:
        s2 = torch.sin(2 * (y1 + gf))
        a = a + grad_f1 * (s2 - 1)
        ag = ag + grad_f1 * s2
    fn = lambda x: adjoint_rhs(x, gf)  # noqa: E731
    x = (y1, a, torch.zeros_like(y0))
    if cfg.adaptive:
        x = solve_per_element(fn, x, t1 - t0, cfg.rtol, cfg.atol, cfg.max_num_steps)
    else:
        x = solve_list(fn, x, fixed_grid_steps(0.0, t1 - t0, cfg.step_size, cfg.max_num_steps), 1.0, cfg.method)
    gy0, ag = x[1], ag + x[2]
    if grad_f0 is not None:
        s2 = torch.sin(2 * (y0 + gf))
        gy0 = gy0 + grad_f0 * (s2 - 1)
        ag = ag + grad_f0 * s2
    return gy0, ag.view(-1, g.numel()).sum(0)
