// Per-element math of the rk_stage op family, shared by the CPU loop and the CUDA kernel.
//
// Everything an explicit Runge-Kutta / Adams solver does between two RHS calls is one of:
//   combine:     out = y + (sum_j c_j * k_j)                  (c_j = dt * w_j, up to
//                                                            kMaxK terms per pass)
//   final+error: y1  = y0 + (sum_j c_j * k_j),  e = sum_j d_j * k_j,
//                r   = e / (atol + rtol * max(|y0|, |y1|)),  accumulate r*r
// The solver's RMS error ratio is sqrt(sum r*r / n); the sum is a fused reduction over the
// same pass that produces y1, so no error tensor is ever materialised.
#pragma once

#include <odekern/macros.h>

#include <cstdint>

namespace odekern {
namespace rk_stage {

// Every combination of the tableaus we ship fits one pass: dopri8's widest has 13 stages (its
// solution; its error estimate has 9 non-zero weights). The error pass must see all its terms
// at once; longer plain combinations (high-order Adams histories, dopri8's dense-output fit)
// are folded in chunks of this size by the launchers.
constexpr int kMaxK = 13;

// Coefficients already multiplied by dt, in the element type: the CPU loop and the CUDA kernel
// then do exactly the same multiply-adds in the same order.
template <typename T, int NK>
ODEKERN_HD T weighted_sum(const T (&k)[NK], const T (&d)[NK]) {
  T acc = T(0);
#pragma unroll
  for (int j = 0; j < NK; ++j) acc += d[j] * k[j];
  return acc;
}

// The increment is summed first and y rounded into once, as torchdiffeq's y0 + dy: adding the
// terms onto y one by one rounds at y's magnitude once per term, and those roundings drift the
// same way step after step (rk4 in float32 over 1000 steps: 6x the rounding error).
template <typename T, int NK>
ODEKERN_HD T combine(T y, const T (&k)[NK], const T (&c)[NK]) {
  return y + weighted_sum<T, NK>(k, c);
}

// Squared error-ratio term of one element; returned in the accumulation type so the
// reduction over millions of float32 elements does not lose digits.
template <typename T, typename Acc>
ODEKERN_HD Acc error_ratio_sq(T y0, T y1, T err, T rtol, T atol) {
  const T ay0 = y0 < T(0) ? -y0 : y0;
  const T ay1 = y1 < T(0) ? -y1 : y1;
  const T scale = atol + rtol * (ay0 > ay1 ? ay0 : ay1);
  const Acc r = static_cast<Acc>(err) / static_cast<Acc>(scale);
  return r * r;
}

}  // namespace rk_stage
}  // namespace odekern
