// Test- and benchmark-only ops on the nmODE kernels' math, in the library odekern_testing of
// the test extension (tests/native/build.py); the runtime extension odekern._C does not ship them.
//
// - nmode_pe_scalar_reference: the header's scalar per-element solver (pe_solve / pe_solve_vjp),
//   one element at a time: the oracle tests/ops/test_nmode_solve_per_element.py compares the
//   vectorised per-element lanes (nmode_solve_cpu_per_element.h) against.
// - nmode_sin_sq_floor: the speed floor of a solve, `reps` chained evaluations per element of
//   the RHS's transcendental (fast_sin_sq), block-resident (no memory traffic);
//   bench/ops/bench_nmode_solve.py compares solves against it at their RHS-evaluation count.
// - nmode_sincos_floor: the same for the continuous adjoint's RHS (one fast_sincos per
//   evaluation: f and its derivative sin 2x), the floor of gradient="adjoint"'s backward.
// - nmode_adjoint_attempt_floor: dopri5 attempts on the adjoint system with the backward's own
//   stage and error code (adj_candidate_lanes), every attempt accepted, block-resident (no
//   memory traffic): without `control`, the arithmetic any dopri5 solve of that system does per
//   attempt besides its sincos evaluations, whatever its step control; with it, plus the
//   backward's per-lane float64 controller.
// - nmode_inv_fifth_root: the CPU lane paths' x^(-1/5) (nmode_solve_cpu_lane_control.h, the
//   vectorised loop the solvers call), float64, for its accuracy test against pow.
// - nmode_failure_text / nmode_status_message: the C++ kernels' generated failure messages
//   (odekern/generated/nmode_failures.h), for the test that they are failures.py's words.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "ops/nmode_solve/nmode_solve.h"
#include "ops/nmode_solve/nmode_solve_cpu_adjoint.h"
#include "ops/nmode_solve/nmode_solve_cpu_kernels.h"
#include "ops/nmode_solve/nmode_solve_cpu_lane_control.h"
#include "ops/nmode_solve/nmode_solve_cpu_parallel.h"
#include "ops/nmode_solve/nmode_solve_host.h"

namespace odekern {
namespace nmode {
namespace {

// y1, dL/dy0 and the per-element dL/dg (not yet summed over g's broadcast) for flat y0 [N],
// g [G] (N % G == 0), cotangents grad_y1 and optionally grad_f0 / grad_f1 (each [N]).
std::tuple<at::Tensor, at::Tensor, at::Tensor> nmode_pe_scalar_reference_cpu(
    const at::Tensor& y0_, const at::Tensor& g_, double t0, double t1, double rtol, double atol,
    int64_t max_num_steps, const at::Tensor& grad_y1_, const c10::optional<at::Tensor>& grad_f0_,
    const c10::optional<at::Tensor>& grad_f1_) {
  ODEKERN_CHECK_CPU(y0_);
  ODEKERN_CHECK_FLOATING(y0_);
  TORCH_CHECK(g_.scalar_type() == y0_.scalar_type() && grad_y1_.scalar_type() == y0_.scalar_type(),
              "g and grad_y1 must have y0's dtype");
  TORCH_CHECK(y0_.dim() == 1 && g_.dim() == 1 && g_.numel() > 0 && y0_.numel() % g_.numel() == 0,
              "y0 [N] and g [G] must be 1-D with N % G == 0");
  TORCH_CHECK(grad_y1_.sizes() == y0_.sizes(), "grad_y1 must have y0's shape");
  const at::Tensor y0 = y0_.contiguous(), g = g_.contiguous(), gy1 = grad_y1_.contiguous();
  const bool has_f0 = grad_f0_.has_value() && grad_f0_->defined();
  const bool has_f1 = grad_f1_.has_value() && grad_f1_->defined();
  const at::Tensor gf0 = has_f0 ? grad_f0_->contiguous() : at::Tensor();
  const at::Tensor gf1 = has_f1 ? grad_f1_->contiguous() : at::Tensor();
  at::Tensor y1 = at::empty_like(y0), gy0 = at::empty_like(y0), gg = at::empty_like(y0);
  const int64_t N = y0.numel(), G = g.numel();
  int worst = kOk;
  AT_DISPATCH_FLOATING_TYPES(y0.scalar_type(), "nmode_pe_scalar_reference", [&] {
    const scalar_t* py0 = y0.data_ptr<scalar_t>();
    const scalar_t* pg = g.data_ptr<scalar_t>();
    const scalar_t* pgy1 = gy1.data_ptr<scalar_t>();
    const scalar_t* pgf0 = has_f0 ? gf0.data_ptr<scalar_t>() : nullptr;
    const scalar_t* pgf1 = has_f1 ? gf1.data_ptr<scalar_t>() : nullptr;
    const PerElementParams p{t1 - t0, rtol, atol, max_num_steps};
    for (int64_t i = 0; i < N; ++i) {
      const scalar_t gi = pg[i % G];
      scalar_t y = py0[i], yb = pgy1[i], gb = scalar_t(0);
      worst = std::max(worst, pe_solve<scalar_t>(&y, gi, p));
      y1.data_ptr<scalar_t>()[i] = y;
      if (pgf1) rhs_vjp(y, gi, pgf1[i], &yb, &gb);
      worst = std::max(worst, pe_solve_vjp<scalar_t>(py0[i], gi, p, &yb, &gb));
      if (pgf0) rhs_vjp(py0[i], gi, pgf0[i], &yb, &gb);
      gy0.data_ptr<scalar_t>()[i] = yb;
      gg.data_ptr<scalar_t>()[i] = gb;
    }
  });
  check_status(worst, max_num_steps);
  return {y1, gy0, gg};
}

// The transcendental work of one RHS evaluation: the forward's fast_sin_sq, or the adjoint
// system's sincos (rhs_and_sin2: f and sin 2x from one range reduction). Chained evaluations
// (v <- eval(v)) so that none can be skipped; the values stay bounded.
struct SinSqEval {
  template <typename T>
  static ODEKERN_ALWAYS_INLINE T apply(T v) { return fast_sin_sq(v); }
};
struct SinCosEval {
  template <typename T>
  static ODEKERN_ALWAYS_INLINE T apply(T v) {
    T s2;
    const T f = rhs_and_sin2(v, T(0), &s2);
    return f + s2;
  }
};

template <typename Eval, typename T>
ODEKERN_ISA_CLONES void floor_block(const T* __restrict x, int64_t len, int64_t reps, T* __restrict out) {
  alignas(64) T v[cpu::kBlock];
  for (int64_t e = 0; e < len; ++e) v[e] = x[e];
  for (int64_t r = 0; r < reps; ++r) {
#pragma omp simd
    for (int64_t e = 0; e < len; ++e) v[e] = Eval::apply(v[e]);
  }
  for (int64_t e = 0; e < len; ++e) out[e] = v[e];
}

// The floors' frame: x (CPU, floating) in blocks of lanes, in parallel; run(k, x block, its
// length, out block) for block k, with pointers of x's dtype.
template <typename Run>
at::Tensor over_blocks(const at::Tensor& x_, Run run) {
  ODEKERN_CHECK_CPU(x_);
  ODEKERN_CHECK_FLOATING(x_);
  const at::Tensor x = x_.contiguous();
  at::Tensor out = at::empty_like(x);
  const int64_t N = x.numel(), block = cpu::kBlock, blocks = (N + block - 1) / block;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nmode_floor_cpu", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    cpu::parallel_tasks(blocks, [&](int64_t k) {
      run(k, px + k * block, std::min(block, N - k * block), po + k * block);
    });
  });
  return out;
}

template <typename Eval>
at::Tensor floor_cpu(const at::Tensor& x, int64_t reps) {
  return over_blocks(x, [&](int64_t, const auto* in, int64_t len, auto* out) {
    floor_block<Eval>(in, len, reps, out);
  });
}

at::Tensor nmode_sin_sq_floor_cpu(const at::Tensor& x, int64_t reps) { return floor_cpu<SinSqEval>(x, reps); }
at::Tensor nmode_sincos_floor_cpu(const at::Tensor& x, int64_t reps) { return floor_cpu<SinCosEval>(x, reps); }

// x = [v, 1, 0] per lane (v from the input), g = 0, a step so small that the state stays
// bounded over any number of attempts; returns a_y after the attempts, which keeps every
// attempt live. With `control`, each attempt is the backward's whole adj_attempt_lanes (the
// per-lane float64 controller included; t_end out of reach, so no lane finishes, and the step
// set back after each attempt).
template <typename T>
ODEKERN_ISA_CLONES void adjoint_attempt_block(const T* __restrict v, int64_t len, int64_t attempts, bool control,
                                              T* __restrict out) {
  alignas(64) cpu::AdjLanes<T> L;
  for (int64_t e = 0; e < cpu::kBlock; ++e) {
    L.x[0][e] = e < len ? v[e] : T(0);
    L.x[1][e] = T(1);
    L.x[2][e] = T(0);
    L.g[e] = T(0);
    L.dt[e] = T(1e-3);
    L.h[e] = 1e-3;
    L.t[e] = 0.0;
    L.attempts[e] = 0.0;
    L.active[e] = 1.0;
  }
  cpu::AdjSweep<T, kDopri5, 0, 1>::run(L.x, L.g, L.dt, cpu::kBlock, L.k);
  const T rtol = T(1e-7), atol = T(1e-9);
  for (int64_t r = 0; r < attempts; ++r) {
    if (control) {
      cpu::adj_attempt_lanes<T>(L, 1e300, rtol, atol, 1e300);
      // Back to the fixed step the controller grew (the work does not depend on it).
      for (int64_t e = 0; e < cpu::kBlock; ++e) {
        L.dt[e] = T(1e-3);
        L.h[e] = 1e-3;
      }
      continue;
    }
    cpu::adj_candidate_lanes<T>(L, rtol, atol);
#pragma omp simd
    for (int64_t e = 0; e < cpu::kBlock; ++e) {
NMODE_UNROLL
      for (int d = 0; d < 3; ++d) {
        L.x[d][e] = L.x1[d][e];
        L.k[d][0][e] = L.k[d][6][e];
      }
    }
  }
  for (int64_t e = 0; e < len; ++e) out[e] = L.x[1][e];
}

// `attempts` per element on average: block k runs floor((k + 1) A) - floor(k A) of them, so that
// a fractional mean (an attempt count averaged over elements) is timed as such.
at::Tensor nmode_adjoint_attempt_floor_cpu(const at::Tensor& x, double attempts, bool control) {
  TORCH_CHECK(attempts >= 0.0 && attempts < 1e6, "nmode_adjoint_attempt_floor: attempts must be in [0, 1e6), got ",
              attempts);
  return over_blocks(x, [&](int64_t k, const auto* in, int64_t len, auto* out) {
    const auto runs = int64_t(std::floor(double(k + 1) * attempts)) - int64_t(std::floor(double(k) * attempts));
    adjoint_attempt_block(in, len, runs, control, out);
  });
}

at::Tensor nmode_inv_fifth_root_cpu(const at::Tensor& x_) {
  ODEKERN_CHECK_CPU(x_);
  TORCH_CHECK(x_.scalar_type() == at::kDouble, "nmode_inv_fifth_root: x must be float64");
  at::Tensor out = x_.contiguous().clone();
  inv_fifth_root_lanes(out.data_ptr<double>(), out.numel());
  return out;
}

// The failure `name`'s message with every integer field `count` and every double field `value`.
std::string nmode_failure_text(c10::string_view name_, int64_t count, double value) {
  const std::string name(name_);
  if (name == "per_element_too_many_steps") return per_element_too_many_steps(count);
  if (name == "per_element_step_underflow") return per_element_step_underflow();
  if (name == "per_element_non_finite") return per_element_non_finite();
  if (name == "unknown_status") return unknown_status(int(count));
  if (name == "global_non_finite_start") return global_non_finite_start(value);
  if (name == "global_too_many_steps") return global_too_many_steps(count, value, value);
  if (name == "global_non_finite_step") return global_non_finite_step(value);
  if (name == "global_step_underflow") return global_step_underflow(value, value);
  if (name == "global_non_finite_state") return global_non_finite_state(value);
  if (name == "global_non_finite_finishing") return global_non_finite_finishing(value);
  if (name == "non_finite_y1") return non_finite_y1();
  if (name == "fixed_grid_too_many_steps") return fixed_grid_too_many_steps(value, value, value, value, count);
  TORCH_CHECK(false, "nmode_failure_text: no C++ function for the failure '", name, "'");
  return std::string();
}

std::string nmode_status_message(int64_t status, int64_t max_num_steps) {
  return status_message(int(status), max_num_steps);
}

}  // namespace
}  // namespace nmode
}  // namespace odekern

TORCH_LIBRARY(odekern_testing, m) {
  m.def(
      "nmode_pe_scalar_reference(Tensor y0, Tensor g, float t0, float t1, float rtol, float atol, "
      "int max_num_steps, Tensor grad_y1, Tensor? grad_f0, Tensor? grad_f1) "
      "-> (Tensor y1, Tensor grad_y0, Tensor grad_g)");
  m.def("nmode_sin_sq_floor(Tensor x, int reps) -> Tensor");
  m.def("nmode_sincos_floor(Tensor x, int reps) -> Tensor");
  m.def("nmode_adjoint_attempt_floor(Tensor x, float attempts, bool control) -> Tensor");
  m.def("nmode_inv_fifth_root(Tensor x) -> Tensor");
  // No tensor arguments, so catch-all kernels (no dispatch key to pick one by).
  m.def("nmode_failure_text(str name, int count, float value) -> str", &odekern::nmode::nmode_failure_text);
  m.def("nmode_status_message(int status, int max_num_steps) -> str", &odekern::nmode::nmode_status_message);
}

TORCH_LIBRARY_IMPL(odekern_testing, CPU, m) {
  m.impl("nmode_pe_scalar_reference", &odekern::nmode::nmode_pe_scalar_reference_cpu);
  m.impl("nmode_sin_sq_floor", &odekern::nmode::nmode_sin_sq_floor_cpu);
  m.impl("nmode_sincos_floor", &odekern::nmode::nmode_sincos_floor_cpu);
  m.impl("nmode_adjoint_attempt_floor", &odekern::nmode::nmode_adjoint_attempt_floor_cpu);
  m.impl("nmode_inv_fifth_root", &odekern::nmode::nmode_inv_fifth_root_cpu);
}
