// Torch binding of the CUDA kernels (nmode_solve_cuda.cu): checks, allocation, the stats
// tensor. Compiled only in CUDA builds (setup.py adds *_cuda.cpp with the .cu files).
#include <ATen/ATen.h>
#include <odekern/cuda_binding.h>

#include <string>
#include <vector>

#include "ops/nmode_solve/nmode_solve_cuda.h"
#include "ops/nmode_solve/nmode_solve_host.h"

namespace odekern {
namespace nmode {
namespace {

void check_inputs(const at::Tensor& y0, const at::Tensor& g) {
  ODEKERN_CHECK_CUDA(y0);
  ODEKERN_CHECK_CUDA(g);
  ODEKERN_CHECK_FLOATING(y0);
  TORCH_CHECK(g.scalar_type() == y0.scalar_type(), "g must have y0's dtype");
  TORCH_CHECK(g.device() == y0.device(), "g must be on y0's device");
  TORCH_CHECK(y0.dim() == 1 && g.dim() == 1, "y0 and g must be 1-D (flattened) at this level");
  TORCH_CHECK((g.numel() == 0 && y0.numel() == 0) || (g.numel() > 0 && y0.numel() % g.numel() == 0),
              "y0.numel() must be a multiple of g.numel() (leading broadcast)");
}

at::Tensor host_dts_to_device(const std::vector<double>& dts, const at::Device& dev) {
  auto cpu = at::empty({static_cast<int64_t>(dts.size())}, at::TensorOptions().dtype(at::kDouble));
  std::copy(dts.begin(), dts.end(), cpu.data_ptr<double>());
  return cpu.to(dev);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> nmode_solve_fwd_cuda(
    const at::Tensor& y0_, const at::Tensor& g_, double t0, double t1, c10::string_view method_name,
    double step_size, double rtol, double atol, c10::string_view control, int64_t max_num_steps,
    bool need_f) {
  check_inputs(y0_, g_);
  TORCH_CHECK(t1 > t0, "nmode_solve: t1 must be greater than t0");
  const c10::cuda::CUDAGuard guard(y0_.device());
  const at::Tensor y0 = y0_.contiguous(), g = g_.contiguous();
  const int method = parse_method(std::string(method_name));
  const bool global = std::string(control) == "global";
  const int64_t N = y0.numel();
  at::Tensor y1 = at::empty_like(y0);
  at::Tensor f0 = need_f ? at::empty_like(y0) : at::empty({0}, y0.options());
  at::Tensor f1 = need_f ? at::empty_like(y0) : at::empty({0}, y0.options());
  std::vector<double> dts;
  if (method != kDopri5) {
    TORCH_CHECK(step_size > 0, "nmode_solve: step_size must be > 0 for fixed-step methods");
    dts.resize(static_cast<size_t>(fixed_grid(t0, t1, step_size, nullptr)));
    TORCH_CHECK(static_cast<int64_t>(dts.size()) <= max_num_steps,
                fixed_grid_too_many_steps(step_size, t0, t1, double(dts.size()), max_num_steps));
    fixed_grid(t0, t1, step_size, dts.data());
  }
  const at::Tensor dts_dev = host_dts_to_device(dts, y0.device());
  const bool use_global = method == kDopri5 && global;
  at::Tensor scratch = use_global ? at::empty({4 * N}, y0.options()) : at::Tensor();
  at::Tensor partials = use_global ? at::empty({cuda::global_partials_needed(N)}, y0.options().dtype(at::kDouble))
                                   : at::Tensor();
  at::Tensor status = at::zeros({1}, y0.options().dtype(at::kInt));
  cuda::ForwardArgs a{};
  a.y0 = y0.data_ptr();
  a.g = g.data_ptr();
  a.N = N;
  a.G = g.numel();
  a.is_double = y0.scalar_type() == at::kDouble;
  a.method = method;
  a.global = global;
  a.t0 = t0;
  a.t1 = t1;
  a.rtol = rtol;
  a.atol = atol;
  a.max_steps = max_num_steps;
  a.dts = dts.empty() ? nullptr : dts_dev.data_ptr<double>();
  a.n_fixed = static_cast<int64_t>(dts.size());
  a.y1 = y1.data_ptr();
  a.f0 = need_f ? f0.data_ptr() : nullptr;
  a.f1 = need_f ? f1.data_ptr() : nullptr;
  a.scratch = use_global ? scratch.data_ptr() : nullptr;
  a.partials = use_global ? partials.data_ptr<double>() : nullptr;
  a.status = status.data_ptr<int>();
  std::vector<double> acc;
  int64_t n_rej = 0;
  double theta = 1.0;
  const std::string err = cuda::forward(a, c10::cuda::getCurrentCUDAStream().stream(), &acc, &n_rej, &theta);
  TORCH_CHECK(err.empty(), err);
  const std::vector<double>& steps = use_global ? acc : dts;
  const int64_t n_acc = (method == kDopri5 && !global) ? 0 : static_cast<int64_t>(steps.size());
  auto stats = at::empty({3 + n_acc}, at::TensorOptions().dtype(at::kDouble));
  double* p = stats.data_ptr<double>();
  p[0] = double(n_acc);
  p[1] = double(n_rej);
  p[2] = theta;
  for (int64_t i = 0; i < n_acc; ++i) p[3 + i] = steps[i];
  return {y1, f0, f1, stats};
}

std::tuple<at::Tensor, at::Tensor> nmode_solve_bwd_cuda(
    const at::Tensor& grad_y1_, const c10::optional<at::Tensor>& grad_f0_,
    const c10::optional<at::Tensor>& grad_f1_, const at::Tensor& y0_, const at::Tensor& g_,
    const c10::optional<at::Tensor>& y1_, const at::Tensor& stats_, double t0, double t1,
    c10::string_view method_name, double step_size, double rtol, double atol, c10::string_view control,
    c10::string_view gradient, int64_t max_num_steps) {
  check_inputs(y0_, g_);
  const c10::cuda::CUDAGuard guard(y0_.device());
  const at::Tensor y0 = y0_.contiguous(), g = g_.contiguous(), gy1 = grad_y1_.contiguous();
  const bool has_gf0 = grad_f0_.has_value() && grad_f0_->defined() && grad_f0_->numel() > 0;
  const bool has_gf1 = grad_f1_.has_value() && grad_f1_->defined() && grad_f1_->numel() > 0;
  const at::Tensor gf0 = has_gf0 ? grad_f0_->contiguous() : at::Tensor();
  const at::Tensor gf1 = has_gf1 ? grad_f1_->contiguous() : at::Tensor();
  const int method = parse_method(std::string(method_name));
  const bool global = std::string(control) == "global";
  const bool adjoint = std::string(gradient) == "adjoint";
  const at::Tensor y1 = adjoint_start(y1_, y0, adjoint);
  at::Tensor gy0 = at::empty_like(y0);
  at::Tensor gg = at::zeros_like(g);
  if (y0.numel() == 0) return {gy0, gg};
  const at::Tensor stats = stats_.to(at::kDouble).cpu().contiguous();
  const int64_t n = static_cast<int64_t>(stats.data_ptr<double>()[0]);
  const at::Tensor dts_dev = stats.slice(0, 3, 3 + n).to(y0.device());
  std::vector<double> adj;
  if (adjoint && method != kDopri5) {
    adj.resize(static_cast<size_t>(fixed_grid(0.0, t1 - t0, step_size, nullptr)));
    fixed_grid(0.0, t1 - t0, step_size, adj.data());
  }
  const at::Tensor adj_dev = host_dts_to_device(adj, y0.device());
  at::Tensor status = at::zeros({1}, y0.options().dtype(at::kInt));
  cuda::BackwardArgs a{};
  a.y0 = y0.data_ptr();
  a.y1 = adjoint ? y1.data_ptr() : nullptr;
  a.g = g.data_ptr();
  a.gy1 = gy1.data_ptr();
  a.gf0 = has_gf0 ? gf0.data_ptr() : nullptr;
  a.gf1 = has_gf1 ? gf1.data_ptr() : nullptr;
  a.N = y0.numel();
  a.G = g.numel();
  a.is_double = y0.scalar_type() == at::kDouble;
  a.method = method;
  a.list_mode = method != kDopri5 || global;
  a.adjoint = adjoint;
  a.t0 = t0;
  a.t1 = t1;
  a.rtol = rtol;
  a.atol = atol;
  a.max_steps = max_num_steps;
  a.dts = n > 0 ? dts_dev.data_ptr<double>() : nullptr;
  a.n = n;
  a.theta = stats.data_ptr<double>()[2];
  a.adj_dts = adj.empty() ? nullptr : adj_dev.data_ptr<double>();
  a.adj_n = static_cast<int64_t>(adj.size());
  a.gy0 = gy0.data_ptr();
  a.gg = gg.data_ptr();
  a.status = status.data_ptr<int>();
  const std::string err = cuda::backward(a, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err.empty(), err);
  return {gy0, gg};
}

}  // namespace
}  // namespace nmode
}  // namespace odekern

ODEKERN_CUDA_IMPL(m) {
  m.impl("nmode_solve_fwd", &odekern::nmode::nmode_solve_fwd_cuda);
  m.impl("nmode_solve_bwd", &odekern::nmode::nmode_solve_bwd_cuda);
}
