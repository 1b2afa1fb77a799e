"""The fused kernels' sine (odekern/ops/nmode_solve/fast_sine.py): its constants split pi/2 as
stated, and the C++ and Triton sines are as accurate as the argument's own rounding allows over
the whole range, |x| <= range, and not finite beyond it (where a Cody-Waite reduction would
silently return a wrong sine), so that a solve fails and names the input instead.

The C++ sine is reached through the test extension's speed-floor ops (tests/native), the Triton
one through a one-line kernel around jit_math's RHS, run by Triton's interpreter here.
"""

from __future__ import annotations

import math
from decimal import Decimal, getcontext
from fractions import Fraction

import pytest
import torch
from nmode_backends import require_available

from odekern.ops.nmode_solve import fast_sine

DTYPES = [torch.float32, torch.float64]
PI_DIGITS = "3.14159265358979323846264338327950288419716939937510582097494459230781640628620899863"


def _float32_exact(v: float) -> bool:
    return fast_sine._float32(v) == v


@pytest.mark.parametrize("reduction, mantissa", [(fast_sine.FLOAT32, 24), (fast_sine.FLOAT64, 53)])
def test_constants_split_pi_over_two_and_round_by_the_magic_number(reduction, mantissa):
    getcontext().prec = 80
    half_pi = Fraction(Decimal(PI_DIGITS) / 2)
    parts = [Fraction(reduction.pio2_hi), Fraction(reduction.pio2_mid), Fraction(reduction.pio2_lo)]
    # Each part carries on where the previous ones stop: the sum misses pi/2 by less than the
    # last part's own rounding (a relative 2^-mantissa of it).
    assert abs(sum(parts) - half_pi) <= abs(parts[2]) * Fraction(1, 2**mantissa)
    assert abs(parts[0] + parts[1] - half_pi) > abs(parts[2]) / 2  # the last part is needed
    assert reduction.magic == 1.5 * 2.0 ** (mantissa - 1)
    assert abs(reduction.two_over_pi - 2 / math.pi) <= 2 / math.pi * 2.0**-mantissa
    assert abs(reduction.inv_pi - 1 / math.pi) <= 1 / math.pi * 2.0**-mantissa
    if mantissa == 24:
        assert all(_float32_exact(getattr(reduction, f)) for f in
                   ("two_over_pi", "inv_pi", "pio2_hi", "pio2_mid", "pio2_lo", "magic", "range"))
    # The turn limits are the range's, rounded: |x| <= range never exceeds them.
    assert reduction.max_quarter_turns == round(reduction.range * 2 / math.pi)
    assert reduction.max_half_turns == round(reduction.range / math.pi)


def _points(dtype) -> torch.Tensor:
    """Arguments over the whole range in the state's dtype: a dense sweep, its two ends, and
    points just inside them."""
    r = fast_sine.REDUCTIONS[dtype].range
    sweep = torch.linspace(-r, r, 200_001, dtype=torch.float64)
    edges = torch.tensor([r, -r, r - 0.5, -(r - 0.5), r - math.pi / 4, 0.0, 1e-30], dtype=torch.float64)
    return torch.cat([sweep, edges]).to(dtype)


def _beyond(dtype) -> torch.Tensor:
    """Arguments beyond the range: half a turn past it, well past it, and far past it (where the
    rounded turn count no longer fits an int)."""
    r = fast_sine.REDUCTIONS[dtype].range
    huge = 1e30 if dtype == torch.float32 else 1e300
    return torch.tensor([r + math.pi, -(r + math.pi), 2 * r, -3 * r, 1e3 * r, huge, -huge], dtype=dtype)


def _assert_as_exact_as_the_argument(got: torch.Tensor, want: torch.Tensor, x: torch.Tensor) -> None:
    """|got - want| within a few roundings of the result and of the argument: the sine of x
    perturbed by one unit in x's last place differs by up to |x| eps."""
    eps = torch.finfo(x.dtype).eps
    allowed = 4 * eps * (1.0 + x.double().abs())
    err = (got.double() - want).abs()
    worst = int(torch.argmax(err - allowed))
    assert bool((err <= allowed).all()), (f"error {float(err[worst]):.3g} > {float(allowed[worst]):.3g} "
                                          f"at x = {float(x[worst])!r}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpp_sine_is_exact_over_the_range_and_inf_beyond(testing_ops, dtype):
    x = _points(dtype)
    xd = x.double()
    # The forward RHS's sin^2 (fast_sin_sq) and the adjoint's sincos (rhs_and_sin2 at g = 0,
    # whose floor op returns -x + sin^2 x + sin 2x).
    _assert_as_exact_as_the_argument(testing_ops.nmode_sin_sq_floor(x, 1), torch.sin(xd) ** 2, x)
    _assert_as_exact_as_the_argument(testing_ops.nmode_sincos_floor(x, 1) + x,
                                     torch.sin(xd) ** 2 + torch.sin(2 * xd), x)
    out = _beyond(dtype)
    assert not bool(torch.isfinite(testing_ops.nmode_sin_sq_floor(out, 1)).any())
    assert not bool(torch.isfinite(testing_ops.nmode_sincos_floor(out, 1)).any())


try:  # the Triton backend is optional
    import triton
    import triton.language as tl

    from odekern.ops.nmode_solve.triton import jit_math
except ImportError:
    triton = None
else:
    @triton.jit
    def _rhs_kernel(x_ptr, f_ptr, f2_ptr, s2_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        g = tl.load(x_ptr + offs, mask=mask, other=0.0)
        y = tl.zeros_like(g)
        tl.store(f_ptr + offs, jit_math.rhs(y, g), mask=mask)
        f2, s2 = jit_math.rhs_sin2(y, g)
        tl.store(f2_ptr + offs, f2, mask=mask)
        tl.store(s2_ptr + offs, s2, mask=mask)


def _triton_rhs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """jit_math's rhs and rhs_sin2 at y = 0, g = x: sin^2 x, and f = sin^2 x with sin 2x."""
    f, f2, s2 = (torch.empty_like(x) for _ in range(3))
    block = 4096
    _rhs_kernel[(triton.cdiv(x.numel(), block),)](x, f, f2, s2, x.numel(), BLOCK=block)
    return f, f2, s2


@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # NumPy, beyond the range
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_sine_is_exact_over_the_range_and_inf_beyond(dtype):
    require_available("triton")
    x = _points(dtype)
    xd = x.double()
    f, f2, s2 = _triton_rhs(x)
    # Triton reduces 2x (sin^2 x = (1 - cos 2x) / 2), whose rounding is that of x doubled.
    _assert_as_exact_as_the_argument(f, torch.sin(xd) ** 2, 2 * x)
    _assert_as_exact_as_the_argument(f2, torch.sin(xd) ** 2, 2 * x)
    _assert_as_exact_as_the_argument(s2, torch.sin(2 * xd), 2 * x)
    for out in _triton_rhs(_beyond(dtype)):
        assert not bool(torch.isfinite(out).any())
