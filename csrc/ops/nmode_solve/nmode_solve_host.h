// Host-side glue shared by the CPU and CUDA bindings of nmode_solve (argument parsing and
// turning a per-element status code into a Python exception). Not included by the .cu.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>
#include <odekern/generated/nmode_failures.h>

#include <string>

#include "ops/nmode_solve/nmode_solve.h"

namespace odekern {
namespace nmode {

inline int parse_method(const std::string& name) {
  if (name == "euler") return kEuler;
  if (name == "midpoint") return kMidpoint;
  if (name == "rk4") return kRk4;
  if (name == "rk4_classic") return kRk4Classic;
  if (name == "dopri5") return kDopri5;
  TORCH_CHECK(false, "nmode_solve: method must be one of euler, midpoint, rk4, rk4_classic, dopri5; got '",
              name, "'");
  return -1;
}

inline void check_status(int status, int64_t max_num_steps) {
  TORCH_CHECK(status == kOk, status_message(status, max_num_steps));
}

// The continuous adjoint's starting point, the forward's y(t1): required (y0's shape, dtype and
// device) for gradient="adjoint", unused otherwise (an undefined tensor is returned).
inline at::Tensor adjoint_start(const c10::optional<at::Tensor>& y1, const at::Tensor& y0, bool adjoint) {
  if (!adjoint) return at::Tensor();
  TORCH_CHECK(y1.has_value() && y1->defined(), "nmode_solve_bwd: gradient='adjoint' needs y1, the forward's y(t1)");
  TORCH_CHECK(y1->sizes() == y0.sizes() && y1->scalar_type() == y0.scalar_type() && y1->device() == y0.device(),
              "nmode_solve_bwd: y1 must have y0's shape, dtype and device");
  return y1->contiguous();
}

}  // namespace nmode
}  // namespace odekern
