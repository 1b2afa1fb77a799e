// CUDA binding of the rk_stage op family: checks, buffers, current stream; the kernels and
// their launchers live in rk_stage_cuda.cu (no torch headers there).
#include <torch/types.h>

#include <optional>
#include <vector>

#include <odekern/cuda_binding.h>

#include "rk_stage.h"
#include "rk_stage_host.h"

namespace odekern {
namespace rk_stage {

int rk_error_ratio_cuda_partials(int64_t n);
void rk_combine_cuda_launch(bool is_double, const void* y, const void* const* ks,
                            const double* coeffs, int nk, void* out, int64_t n,
                            cudaStream_t stream);
void rk_error_ratio_cuda_launch(bool is_double, const void* y0, const void* y1,
                                const void* const* ks, const double* err_coeffs, int nk,
                                double rtol, double atol, double* partial, double* result,
                                int64_t n, cudaStream_t stream);

namespace {

void check_cuda_operands(const at::Tensor& y, at::TensorList ks, size_t ncoeffs,
                         const at::Tensor& out) {
  ODEKERN_CHECK_CUDA(y);
  ODEKERN_CHECK_FLOATING(y);
  ODEKERN_CHECK_CONTIGUOUS(y);
  ODEKERN_CHECK_CONTIGUOUS(out);
  TORCH_CHECK(out.device() == y.device() && out.scalar_type() == y.scalar_type() &&
                  out.sizes() == y.sizes(),
              "rk_stage: the output must match the state's device, dtype and shape");
  TORCH_CHECK(ks.size() == ncoeffs, "rk_stage: got ", ks.size(), " k tensors but ", ncoeffs,
              " coefficients");
  for (size_t j = 0; j < ks.size(); ++j) {
    TORCH_CHECK(ks[j].device() == y.device() && ks[j].is_contiguous() &&
                    ks[j].scalar_type() == y.scalar_type() && ks[j].sizes() == y.sizes(),
                "rk_stage: ks[", j, "] must be contiguous with the state's device/dtype/shape");
  }
}

void rk_combine_out_cuda(const std::optional<at::Tensor>& y, at::TensorList ks,
                         at::ArrayRef<double> coeffs, const at::Tensor& out) {
  check_cuda_operands(y.has_value() ? *y : out, ks, coeffs.size(), out);
  const int64_t n = out.numel();
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  if (combine_without_stages(y, ks, out)) return;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool is_double = out.scalar_type() == at::kDouble;
  const void* src = y.has_value() ? y->data_ptr() : nullptr;
  for (size_t start = 0; start < ks.size(); start += kMaxK) {
    const int nk = static_cast<int>(std::min<size_t>(kMaxK, ks.size() - start));
    const void* kp[kMaxK];
    for (int j = 0; j < nk; ++j) kp[j] = ks[start + j].data_ptr();
    rk_combine_cuda_launch(is_double, src, kp, coeffs.data() + start, nk, out.data_ptr(), n,
                           stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    src = out.data_ptr();
  }
}

at::Tensor rk_error_ratio_cuda(const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks,
                               at::ArrayRef<double> err_coeffs, double rtol, double atol) {
  check_cuda_operands(y0, ks, err_coeffs.size(), y1);
  TORCH_CHECK(!ks.empty() && ks.size() <= static_cast<size_t>(kMaxK), "rk_error_ratio: needs 1..", kMaxK,
              " k tensors");
  const c10::cuda::CUDAGuard guard(y0.device());
  auto result = at::zeros({}, y0.options().dtype(at::kDouble));
  const int64_t n = y0.numel();
  if (n == 0) return result;
  auto partial = at::empty({rk_error_ratio_cuda_partials(n)}, y0.options().dtype(at::kDouble));
  const void* kp[kMaxK];
  for (size_t j = 0; j < ks.size(); ++j) kp[j] = ks[j].data_ptr();
  rk_error_ratio_cuda_launch(y0.scalar_type() == at::kDouble, y0.data_ptr(), y1.data_ptr(), kp,
                             err_coeffs.data(), static_cast<int>(ks.size()), rtol, atol,
                             partial.data_ptr<double>(), result.data_ptr<double>(), n,
                             c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return result;
}

}  // namespace
}  // namespace rk_stage
}  // namespace odekern

ODEKERN_CUDA_IMPL(m) {
  m.impl("rk_combine_out", &odekern::rk_stage::rk_combine_out_cuda);
  m.impl("rk_error_ratio", &odekern::rk_stage::rk_error_ratio_cuda);
}
