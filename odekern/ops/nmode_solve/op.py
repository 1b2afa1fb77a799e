"""The torch.library custom op ``odekern::nmode_solve`` and its backward op.

One autograd route for every backend (docs/design.md, principle 6): the forward op's body asks
``odekern.dispatch.select`` which backend runs, ``register_fake`` gives shapes for
torch.compile, and ``register_autograd`` calls ``odekern::nmode_solve_backward``, itself a
custom op (whose own backward refuses: double backward is not supported).

Both ops take the flat layout of the backend contract (config.py): y0 [N], g [G], N % G == 0.
"""

from __future__ import annotations

import math

import torch

from odekern.dispatch import optional_module
from odekern.dispatch import register as _register_backend
from odekern.dispatch import select as _select_backend
from odekern.ops.nmode_solve import cpp, failures, fast_sine, reference
from odekern.ops.nmode_solve.config import NmodeConfig, fixed_grid_step_count
from odekern.solvers.checks import NonFiniteError
from odekern.solvers.state import all_finite

OP = "nmode_solve"


# ---------------------------------------------------------------------------------------------
# Backends. Triton needs an optional dependency: its module is imported on first use
# (dispatch.optional_module), so a missing triton makes that backend refuse with the reason.
# ---------------------------------------------------------------------------------------------
TRITON_MODULE = "odekern.ops.nmode_solve.triton"


def _triton_module():
    return optional_module(TRITON_MODULE)


def _triton_supports(**inputs) -> list[str]:
    mod = _triton_module()
    if isinstance(mod, str):
        return [mod]
    return list(mod.supports(**inputs))


class _TritonBackend:
    @staticmethod
    def forward(*args):
        return _triton_module().forward(*args)

    @staticmethod
    def backward(*args):
        return _triton_module().backward(*args)


_register_backend(OP, "reference", reference)
_register_backend(OP, "cpu", cpp, cpp.supports)
_register_backend(OP, "cuda", cpp, cpp.supports)
_register_backend(OP, "triton", _TritonBackend, _triton_supports)


def select_backend(y0, g, cfg, backend):
    """The backend module (config.py's contract) that runs these inputs."""
    return _select_backend(OP, y0.device, backend, y0=y0, g=g, cfg=cfg).fn


# ---------------------------------------------------------------------------------------------
# Forward op.
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("odekern::nmode_solve", mutates_args=())
def nmode_solve_op(y0: torch.Tensor, g: torch.Tensor, t0: float, t1: float, method: str,
                   step_size: float, rtol: float, atol: float, control: str, gradient: str,
                   max_num_steps: int, need_f: bool, backend: str, stats_capacity: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    cfg = NmodeConfig.from_args(method, step_size, rtol, atol, control, gradient, max_num_steps)
    y1, f0, f1, stats = solve_without_graph(select_backend(y0, g, cfg, backend), y0, g, t0, t1, cfg, need_f)
    if stats_capacity >= 0:  # a static shape for torch.compile; the backward reads stats[0]
        stats = torch.cat([stats, stats.new_zeros(stats_capacity - len(stats))])
    return y1, f0, f1, stats


def stats_capacity(t0: float, t1: float, cfg: NmodeConfig) -> int:
    """An upper bound on the length of ``stats`` known before solving, which torch.compile needs
    to trace the op without a graph break: exact for fixed grids, 3 for per-element control,
    room for ``max_num_steps`` step sizes for global dopri5 control."""
    if not cfg.adaptive:
        return 3 + fixed_grid_step_count(t0, t1, cfg.step_size, cfg.max_num_steps)
    return 3 if cfg.control == "per_element" else 3 + cfg.max_num_steps


def solve_without_graph(impl, y0: torch.Tensor, g: torch.Tensor, t0: float, t1: float, cfg: NmodeConfig,
                        need_f: bool):
    """The forward op's body on backend ``impl``. Also called directly (not through the op) when
    nothing needs a gradient and nothing is being compiled: the custom op's Python dispatch
    costs ~0.15 ms per call, ~5% of a CNM-sized solve.

    Refuses a non-finite y(t1) here, inside the op, so that eager and compiled calls raise alike
    (the data-dependent check is opaque to torch.compile). Inputs that no solve can take (non-finite,
    or beyond the fused sine's range) always give a non-finite y1 or make the kernels raise, so they
    are only inspected in those cases; the C++ CPU kernels check y1 themselves
    (``checks_output_finite``)."""
    try:
        y1, f0, f1, stats = impl.forward(y0, g, t0, t1, cfg, need_f)
    except RuntimeError as exc:
        refuse_inputs_behind_a_failure(impl, y0, g)
        raise_as_solve_failure(exc)
        raise
    checked = getattr(impl, "checks_output_finite", None)
    if not (checked is not None and checked(y0)) and not all_finite(y1):
        refuse_inputs_behind_a_failure(impl, y0, g)
        raise failures.NON_FINITE_Y1.exception()
    return y1, f0, f1, stats.to("cpu", torch.float64)


def raise_as_solve_failure(exc: RuntimeError) -> None:
    """Raises a backend's failed solve with the type ``failures`` gives it: ``NonFiniteError`` for
    NaN/inf values, ``SolveError`` for an exhausted step budget or an underflowing step (both
    also ``RuntimeError``s, as before, and ``AssertionError``s, as odeint's). The C++/CUDA
    kernels can raise only ``RuntimeError``, with a message from the same table, by which it is
    recognised. Returns for any other error, and for one that already has its type."""
    failure = failures.failure_of(str(exc))
    if failure is None or isinstance(exc, failure.error):
        return
    raise failure.error(str(exc)).with_traceback(exc.__traceback__) from None


def refuse_inputs_behind_a_failure(impl, y0: torch.Tensor, g: torch.Tensor) -> None:
    """Raises ValueError naming the input when a failed solve on backend ``impl`` is explained by
    its inputs: non-finite values, or |y0 + g| beyond the range of the fused kernels' sine (the
    reference uses torch.sin and has none). Returns when the failure is the solve's own."""
    check_finite_inputs(y0, g)
    if impl is reference:
        return
    worst = fast_sine.beyond_range(y0, g)
    if worst is not None:
        reduction = fast_sine.REDUCTIONS[y0.dtype]
        wider = f" solve in float64 (range {fast_sine.FLOAT64.range:g}) or" if y0.dtype == torch.float32 else ""
        raise ValueError(
            f"nmode_solve: |y0 + g| reaches {worst:.6g}, beyond {reduction.range:g}, the range over which "
            f"the fused kernels' sine is exact in {y0.dtype} (they refuse rather than return a wrong "
            f"sine); the nmODE state stays near [0, 1], so check y0 and g, or{wider} use "
            f"backend='reference' (torch.sin, no such limit)")


def check_finite_inputs(y0: torch.Tensor, g: torch.Tensor) -> None:
    if not all_finite(y0):
        raise ValueError("y0 contains non-finite values (inf or nan)")
    if not all_finite(g):
        raise ValueError("g contains non-finite values (inf or nan)")


@nmode_solve_op.register_fake
def _(y0, g, t0, t1, method, step_size, rtol, atol, control, gradient, max_num_steps, need_f, backend,
      stats_capacity):
    n_f = y0.numel() if need_f else 0
    stats_len = stats_capacity if stats_capacity >= 0 else torch.library.get_ctx().new_dynamic_size()
    return (torch.empty_like(y0), y0.new_empty(n_f), y0.new_empty(n_f),
            torch.empty(stats_len, dtype=torch.float64, device="cpu"))


# ---------------------------------------------------------------------------------------------
# Backward op.
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("odekern::nmode_solve_backward", mutates_args=())
def nmode_solve_backward_op(grad_y1: torch.Tensor, grad_f0: torch.Tensor | None,
                            grad_f1: torch.Tensor | None, y0: torch.Tensor, g: torch.Tensor,
                            y1: torch.Tensor | None, stats: torch.Tensor, t0: float, t1: float, method: str,
                            step_size: float, rtol: float, atol: float, control: str,
                            gradient: str, max_num_steps: int, backend: str
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = NmodeConfig.from_args(method, step_size, rtol, atol, control, gradient, max_num_steps)
    if cfg.gradient == "adjoint" and (y1 is None or y1.shape != y0.shape):
        raise ValueError(f"nmode_solve_backward: gradient='adjoint' needs y1, the forward's y(t1) shaped like "
                         f"y0 {tuple(y0.shape)}, got {None if y1 is None else tuple(y1.shape)}")
    impl = select_backend(y0, g, cfg, backend)
    if not all(x is None or all_finite(x) for x in (grad_y1, grad_f0, grad_f1)):
        # A non-finite incoming gradient (e.g. AMP's loss scaling overflowing on purpose) makes
        # the gradient non-finite; it is passed on without solving, for the scaler to see.
        return torch.full_like(y0, math.nan), torch.full_like(g, math.nan)
    try:
        gy0, gg = impl.backward(grad_y1.contiguous(), grad_f0, grad_f1, y0, g, y1, stats, t0, t1, cfg)
    except RuntimeError as exc:
        if cfg.gradient != "adjoint":
            raise_as_solve_failure(exc)
            raise
        raise NonFiniteError(_adjoint_diverged(t0, t1, str(exc))) from exc
    if not (all_finite(gy0) and all_finite(gg)):  # from finite inputs: a failed backward solve
        if cfg.gradient == "adjoint":
            raise NonFiniteError(_adjoint_diverged(t0, t1, "its result is NaN/inf"))
        raise NonFiniteError("nmode_solve: the gradient is non-finite (NaN/inf) although the inputs "
                             "and the incoming gradient are finite")
    return gy0, gg


def _adjoint_diverged(t0: float, t1: float, detail: str) -> str:
    growth = math.exp(min(t1 - t0, 700.0))
    return (f"nmode_solve(gradient='adjoint'): the backward solve failed ({detail}). The continuous "
            f"adjoint re-solves y backward in time, which amplifies rounding errors like "
            f"e^(t1 - t0) = {growth:.3g} over this span, so y leaves the range where it is "
            f"meaningful; use gradient='checkpoint' (also O(1) memory) or a shorter span")


@nmode_solve_backward_op.register_fake
def _(grad_y1, grad_f0, grad_f1, y0, g, y1, stats, *args):
    return torch.empty_like(y0), torch.empty_like(g)


def _double_backward(ctx, *grads):
    raise RuntimeError("odekern.nmode_solve: double backward (gradient of the gradient) is not "
                       "supported; use the 'reference' backend inside torch.func if you need it")


def _backward_setup(ctx, inputs, output):
    pass


torch.library.register_autograd("odekern::nmode_solve_backward", _double_backward,
                                setup_context=_backward_setup)


# ---------------------------------------------------------------------------------------------
# Autograd of the forward op.
# ---------------------------------------------------------------------------------------------
def _setup_context(ctx, inputs, output):
    y0, g, t0, t1, method, step_size, rtol, atol, control, gradient, max_num_steps, need_f, backend, _ = inputs
    stats = output[3]
    # The continuous adjoint starts its backward solve at y(t1): kept (one tensor, O(1) in
    # steps, as torchdiffeq's odeint_adjoint keeps it) rather than solved for again, which would
    # cost the backward a whole forward solve. The checkpointed gradient replays the steps from
    # y0 anyway and keeps only y0 and g.
    ctx.save_for_backward(y0, g, stats, output[0] if gradient == "adjoint" else None)
    ctx.args = (t0, t1, method, step_size, rtol, atol, control, gradient, max_num_steps, backend)
    ctx.need_f = need_f


def _backward(ctx, grad_y1, grad_f0, grad_f1, _grad_stats):
    y0, g, stats, y1 = ctx.saved_tensors
    t0, t1, method, step_size, rtol, atol, control, gradient, max_num_steps, backend = ctx.args
    if grad_y1 is None:
        grad_y1 = torch.zeros_like(y0)
    if not ctx.need_f:
        grad_f0 = grad_f1 = None
    gy0, gg = nmode_solve_backward_op(grad_y1, grad_f0, grad_f1, y0, g, y1, stats, t0, t1, method,
                                      step_size, rtol, atol, control, gradient, max_num_steps, backend)
    return gy0, gg, None, None, None, None, None, None, None, None, None, None, None, None


torch.library.register_autograd("odekern::nmode_solve", _backward, setup_context=_setup_context)
