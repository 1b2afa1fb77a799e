// Host-side rules of the rk_stage op family shared by the CPU and CUDA bindings.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace odekern {
namespace rk_stage {

// A combination without stages: out = y, or 0 without y (no kernel needed). Returns whether
// it was one (then out is written and the caller is done).
inline bool combine_without_stages(const std::optional<at::Tensor>& y, at::TensorList ks,
                                   const at::Tensor& out) {
  if (!ks.empty()) return false;
  if (!y.has_value()) {
    out.zero_();
  } else if (!out.is_same(*y)) {
    out.copy_(*y);
  }
  return true;
}

}  // namespace rk_stage
}  // namespace odekern
