// Schemas of the rk_stage op family (kernels: rk_stage_cpu.cpp, rk_stage_cuda.cpp).
//
// Both ops write into caller-provided buffers so a solver loop allocates nothing per step.
// Coefficients arrive already multiplied by dt (float64), one per k tensor; any number of k's
// is accepted (the kernels fold them in chunks of rk_stage::kMaxK).
#include <torch/library.h>

#include <odekern/macros.h>

#include "rk_stage.h"

TORCH_LIBRARY_FRAGMENT(ODEKERN_LIBRARY_NS, m) {
  // out = y + sum_j coeffs[j] * ks[j] (y = None: out = sum_j coeffs[j] * ks[j]); out may be y
  // itself (in-place update).
  m.def("rk_combine_out(Tensor? y, Tensor[] ks, float[] coeffs, Tensor(a!) out) -> ()");
  // The RMS error ratio (0-dim float64, 0 for empty tensors)
  //   sqrt(mean(((sum_j err_coeffs[j] * ks[j]) / (atol + rtol * max(|y0|, |y1|)))^2))
  // (ks = [err] with err_coeffs = [1] for a materialised error estimate); reads only.
  m.def(
      "rk_error_ratio(Tensor y0, Tensor y1, Tensor[] ks, float[] err_coeffs, float rtol, "
      "float atol) -> Tensor");
  // How many k tensors the error ops take at once (rk_stage::kMaxK), so Python asks the build
  // it runs against instead of assuming.
  m.def("rk_stage_max_k() -> int", []() -> int64_t { return odekern::rk_stage::kMaxK; });
}
