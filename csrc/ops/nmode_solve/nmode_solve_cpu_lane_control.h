// Step-size control of one lane of the vectorised CPU block paths (per-element control and the
// continuous adjoint): the header's torchdiffeq controller and initial step with
// pow(x, 1/5) replaced by inv_fifth_root() below, which vectorises (libm's pow does not and,
// called per lane and attempt, cost as much as the whole vectorised step). It agrees with pow
// to about 2 ulps of the double step size, which a float32 state never sees (T(dt) rounds it
// away) and a float64 state sees at rounding level. Torch-free, like the headers that use it.
#pragma once

#include <cstdint>

#include "ops/nmode_solve/nmode_solve.h"

// The lane logic is selects between floating-point values. GCC's default -ftrapping-math
// keeps it from if-converting a floating-point operation (a comparison included) that sits on
// one side of a branch, and VRP / dominator jump threading turn chains of correlated selects
// back into branches with stores on each side; both stop the vectoriser (checked with
// -fopt-info-vec). These options hold for this header's functions only and do not change
// values (no reassociation, no contraction).
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off", "no-trapping-math","no-tree-vrp","no-thread-jumps","no-tree-dominator-opts")

namespace odekern {
namespace nmode {

// ------------------------------------------------------------------------------------------
// x^(-1/5) for x > 0 without libm, and without division (a vector double division costs as
// much as several polynomial sin evaluations). x = m 2^e, e = 5q + r (r in 0..4): the result
// is 2^-q (m 2^r)^(-1/5). A start for (m 2^r)^(-1/5) from two polynomials, then Newton on
// z^-5 = m 2^r, which needs only products.
// ------------------------------------------------------------------------------------------
// Bit casts as __builtin_bit_cast (a memcpy here becomes an aliasing byte copy that the
// vectoriser gives up on).
ODEKERN_ALWAYS_INLINE uint64_t bits_of(double x) { return __builtin_bit_cast(uint64_t, x); }
ODEKERN_ALWAYS_INLINE double double_of(uint64_t u) { return __builtin_bit_cast(double, u); }

// The header's exponent is the double 1.0 / 5.0, which exceeds 1/5; the roots below match it.
constexpr double kFifthExponentExcess = 1.1102230246251565e-17;  // double(0.2) - 1/5
constexpr double kLn2 = 0.6931471805599453;

// For normal x (x >= 2^-1022): the step controller's clamped ratios and most initial-step
// arguments. Every operation is a product, a sum or a bit operation; at about 45 of them per
// element the root dominates a lane's step control, so each one counts: 2^r and 2^-q come from
// the exponent field, and the start needs no table.
ODEKERN_ALWAYS_INLINE double inv_fifth_root_normal(double x) {
  const uint64_t b = bits_of(x);
  const double two52 = 0x1p52;
  // Biased exponent as a double: put it in the mantissa of 2^52 (no int64 -> double convert).
  const double e = (double_of((b >> 52) | bits_of(two52)) - two52) - 1023.0;
  const double m = double_of((b & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull);  // [1, 2)
  const double magic = 6755399441055744.0;  // 1.5 * 2^52: round to nearest integer
  const double q = (((e - 2.0) * 0.2) + magic) - magic;  // (e - 2) / 5 is within 0.4 of q
  const double r = e - 5.0 * q;                          // 0..4, exact
  // 2^-q and 2^r: the biased exponent placed in the mantissa of 2^52, shifted into place.
  const double pow2mq = double_of(bits_of((1023.0 - q) + two52) << 52);
  const double pow2r = double_of(bits_of((1023.0 + r) + two52) << 52);
  const double a = m * pow2r;  // exact, in [1, 32)
  // Start: 2^(-r/5) by the quartic through r = 0..4 (exact there to rounding) times m^(-1/5)
  // on [1, 2) by a quintic fitted in relative error (< 2.7e-6).
  const double inv_root2r = 0.9999999999999998 + r * (-0.13862128377379973 + r * (0.009591881630767454 +
                            r * (-0.00043173465665269497 + r * 1.170009580941526e-05)));
  double z = inv_root2r * (1.4355593351477238 + m * (-0.842661868761743 + m * (0.6397315932631009 +
             m * (-0.3024353794650501 + m * (0.0783029756896536 + m * -0.008499321998099912)))));
  // Newton: z <- z + z (1 - a z^5) / 5; relative error 2.7e-6 -> 2.2e-11 -> rounding.
NMODE_UNROLL
  for (int i = 0; i < 2; ++i) {
    const double z2 = z * z;
    z = z + 0.2 * z * (1.0 - a * (z2 * z2 * z));
  }
  // x^-(1/5 + excess) = x^(-1/5) (1 - excess ln x), ln x ~ (e + m - 1) ln 2 (error < 0.06, far
  // below an ulp after the excess factor).
  const double ln_x = (e + (m - 1.0)) * kLn2;
  return (z * pow2mq) * (1.0 - kFifthExponentExcess * ln_x);
}

// Every x > 0, subnormals included (the initial-step selection feeds unclamped values): those
// are scaled by 2^200 first; (x 2^200)^-(1/5 + excess) = x^-(1/5 + excess) 2^-40 (1 - excess
// ln 2^200) to rounding, which the result undoes.
ODEKERN_ALWAYS_INLINE double inv_fifth_root(double x) {
  // Selects between values computed unconditionally (see the pragma above).
  const bool tiny = x < 0x1p-1000;
  const double unscale = 0x1p40 * (1.0 + kFifthExponentExcess * (200.0 * kLn2));
  return inv_fifth_root_normal(tiny ? x * 0x1p200 : x) * (tiny ? unscale : 1.0);
}

// x[e] <- inv_fifth_root(x[e]) for e < n, for callers compiled without this header's options
// (inlined there, its selects become branches and the loop stays scalar): a function of its
// own, compiled per ISA under these options. One call per block of lanes.
static ODEKERN_ISA_CLONES __attribute__((noinline)) void inv_fifth_root_lanes(double* __restrict x, int64_t n) {
#pragma omp simd
  for (int64_t e = 0; e < n; ++e) x[e] = inv_fifth_root(x[e]);
}
// The same for x[e] that are all normal (controller_root_arg's clamped ratios).
static ODEKERN_ISA_CLONES __attribute__((noinline)) void inv_fifth_root_normal_lanes(double* __restrict x, int64_t n) {
#pragma omp simd
  for (int64_t e = 0; e < n; ++e) x[e] = inv_fifth_root_normal(x[e]);
}

// x^(1/5 + excess) = 1 / x^-(1/5 + excess) (once per lane: the division is fine here).
ODEKERN_ALWAYS_INLINE double fifth_root(double x) { return 1.0 / inv_fifth_root(x); }

// optimal_step of the header (torchdiffeq's _optimal_step_size, order 5) with 1 / pow(ratio,
// 1/5) -> inv_fifth_root_normal(controller_root_arg(ratio)), in two parts so that a caller can
// take the root in a loop of its own (GCC vectorises the root only in a loop whose input comes
// from memory). Outside [2^-20, 2^20] the factor is clamped to ifactor or dfactor whatever the root
// (kSafety * 16 > kIfactor, kSafety / 16 < kDfactor), so ratios there (0 and inf included) are
// clamped into it without changing the result.
static_assert(kSafety * 16.0 > kIfactor && kSafety / 16.0 < kDfactor, "ratio clamp of controller_root_arg");
ODEKERN_ALWAYS_INLINE double controller_root_arg(double ratio) {
  const double lo = ratio < 0x1p-20 ? 0x1p-20 : ratio;
  return lo > 0x1p20 ? 0x1p20 : lo;
}
// Arithmetic is done unconditionally and only results are selected: GCC does not if-convert a
// conditional floating-point operation, which may trap, so a `c ? a * b : d` keeps the loop
// from vectorising.
ODEKERN_ALWAYS_INLINE double optimal_step_from_root(double dt, double ratio, double root) {
  const double dfactor = ratio < 1.0 ? 1.0 : kDfactor;
  double factor = kSafety * root;
  factor = factor > dfactor ? factor : dfactor;
  factor = factor < kIfactor ? factor : kIfactor;
  return dt * (ratio == 0.0 ? kIfactor : factor);
}
ODEKERN_ALWAYS_INLINE double optimal_step_lane(double dt, double ratio) {
  return optimal_step_from_root(dt, ratio, inv_fifth_root_normal(controller_root_arg(ratio)));
}

// initial_step_final of the header with pow -> fifth_root.
ODEKERN_ALWAYS_INLINE double initial_step_final_lane(double h0, double d1, double d2) {
  const bool flat = (d1 <= kInitialFlatFloor) & (d2 <= kInitialFlatFloor);
  const double dm = d1 > d2 ? d1 : d2;
  const double h0_small = h0 * kInitialFlatShrink, h0_big = kInitialMaxGrowth * h0;
  const double h_flat = h0_small > kInitialTinyStep ? h0_small : kInitialTinyStep;
  const double h_root = fifth_root(kInitialStepFraction / (flat ? 1.0 : dm));
  const double h1 = flat ? h_flat : h_root;
  return h0_big < h1 ? h0_big : h1;
}

// initial_step_h0 of the header, both sides computed (see fifth_root).
ODEKERN_ALWAYS_INLINE double initial_step_h0_lane(double d0, double d1) {
  const double h = kInitialStepFraction * d0 / d1;
  return ((d0 < kInitialNormFloor) | (d1 < kInitialNormFloor)) ? kInitialTinyStep : h;
}

}  // namespace nmode
}  // namespace odekern

#pragma GCC pop_options
