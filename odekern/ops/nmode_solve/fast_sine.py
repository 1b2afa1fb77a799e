"""The fused kernels' sine: its range-reduction constants and the range over which it is exact,
per state dtype. The one source for the C++/CUDA header and the Triton kernels (written out by
tools/generate_kernel_constants.py) and for the check that names an input beyond the range
(op.py).

The kernels write x = k pi/2 + r with |r| <= pi/4 (k rounded by adding and subtracting the
"magic" 1.5 * 2^p, which vectorises) and subtract k * pi/2 in three parts (Cody-Waite) whose
leading ones have few significant bits, so their products with k are exact or nearly so; a
polynomial takes sin and cos of r. That keeps the sine as accurate as the argument's own rounding
while |x| <= ``range``; beyond it k * pi/2 is no longer exact enough and the sine would be
silently wrong, so every fused kernel returns inf (or NaN) there instead and the solve names the
input (the pure-PyTorch reference uses torch.sin and has no such limit). The nmODE state stays near
[0, 1], far inside the range; |y + g| leaves it only for pathological inputs.
"""

from __future__ import annotations

import dataclasses
import math
import struct

import torch


def _float32(x: float) -> float:
    """``x`` rounded to the nearest float32 (as a Python float, which holds it exactly)."""
    return struct.unpack("f", struct.pack("f", x))[0]


@dataclasses.dataclass(frozen=True)
class Reduction:
    """One dtype's range reduction. Every field is a value of that dtype (exact as a float)."""

    two_over_pi: float
    inv_pi: float
    pio2_hi: float  # pi/2 = pio2_hi + pio2_mid + pio2_lo, the first two with few significant bits
    pio2_mid: float
    pio2_lo: float
    magic: float  # 1.5 * 2^(mantissa bits): (v + magic) - magic rounds v to an integer
    range: float  # the sine is exact for |x| <= range, not finite from at most half a turn past it

    @property
    def max_quarter_turns(self) -> int:
        """The largest |k| of x = k pi/2 + r with |x| <= range: a larger k means out of range."""
        return round(self.range * 2 / math.pi)

    @property
    def max_half_turns(self) -> int:
        """The same for x = n pi + r (the forward RHS's sin^2 reduces by whole half turns)."""
        return round(self.range / math.pi)


FLOAT32 = Reduction(
    two_over_pi=_float32(2 / math.pi),
    inv_pi=_float32(1 / math.pi),
    pio2_hi=1.5703125,
    pio2_mid=4.837512969970703125e-4,
    pio2_lo=_float32(7.549790126404332e-08),
    magic=1.5 * 2.0**23,
    range=2.0**15,
)

FLOAT64 = Reduction(
    two_over_pi=2 / math.pi,
    inv_pi=1 / math.pi,
    pio2_hi=1.5707963267341256,
    pio2_mid=6.077100506303966e-11,
    pio2_lo=2.0222662487959506e-21,
    magic=1.5 * 2.0**52,
    range=1e7,
)

REDUCTIONS = {torch.float32: FLOAT32, torch.float64: FLOAT64}


def beyond_range(y0: torch.Tensor, g: torch.Tensor) -> float | None:
    """max |y0 + g| (flat layout of the backend contract: element e uses g[e % G]) when it is
    beyond the fused sine's range for their dtype, else None. One pass and one host read: called
    only once a fused solve has failed, to tell this cause from the others."""
    reduction = REDUCTIONS.get(y0.dtype)
    if reduction is None or y0.numel() == 0:
        return None
    worst = float((y0.reshape(-1, g.numel()) + g).abs().max())
    return worst if worst > reduction.range else None
