// dopri5 with global control on the host: torchdiffeq's initial step and accept / reject loop
// over a whole tensor (one step size for every element, error norm = RMS over all of them),
// written once for the CPU and CUDA backends. A backend supplies the passes over the elements
// and their sums; this loop owns every decision, so both take the same steps and fail with the
// same messages. Torch-free (the .cu includes it); errors are returned as text, which the
// bindings raise.
#pragma once

#include <odekern/generated/nmode_failures.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "ops/nmode_solve/nmode_solve.h"

namespace odekern {
namespace nmode {

struct GlobalControlResult {
  std::vector<double> dts;  // accepted steps
  int64_t n_rejected = 0;
  double theta = 1.0;       // fraction of the last step that reaches t1
};

// What the loop asks of a backend. Each pass returns "" or an error message.
//   initial_norm_sums(&s0, &s1): f0 = f(y0) into the backend's current stage, and the sums over
//       elements of (y0 / scale)^2 and (f0 / scale)^2;
//   initial_d2_sum(h0, &s2): the sum of ((f(y0 + h0 f0) - f0) / scale)^2;
//   attempt(dt, finishing, theta, &s): one step from the current state into a candidate (into
//       the outputs y1 / f1 when finishing, evaluated at theta of the step), s = the sum of
//       squared scaled errors;
//   accept(): the candidate becomes the current state.
template <class Backend>
std::string global_dopri5(Backend& backend, int64_t n, double t0, double t1, int64_t max_steps,
                          GlobalControlResult* result) {
  std::string err;
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, ssum = 0.0;
  if (!(err = backend.initial_norm_sums(&s0, &s1)).empty()) return err;
  const double d0 = std::sqrt(s0 / double(n)), d1 = std::sqrt(s1 / double(n));
  const double h0 = initial_step_h0(d0, d1);
  if (!(err = backend.initial_d2_sum(h0, &s2)).empty()) return err;
  double h = initial_step_final(h0, d1, std::sqrt(s2 / double(n)) / h0);

  double t = t0;
  int64_t attempts = 0;
  while (true) {
    if (attempts++ >= max_steps)
      return global_too_many_steps(max_steps, t, h);
    if (!std::isfinite(h))
      return global_non_finite_step(t);
    const double dt = h, t_next = t + dt;
    if (!(t_next > t)) return global_step_underflow(dt, t);
    const bool finishing = t_next >= t1;
    const double theta = finishing ? (t1 - t) / (t_next - t) : 1.0;
    if (!(err = backend.attempt(dt, finishing, theta, &ssum)).empty()) return err;
    const double ratio = std::sqrt(ssum / double(n));
    if (std::isnan(ratio))
      return finishing ? global_non_finite_finishing(t) : global_non_finite_state(t);
    if (ratio <= 1.0) {
      result->dts.push_back(dt);
      if (finishing) {
        result->theta = theta;
        return err;
      }
      backend.accept();
      t = t_next;
    } else {
      ++result->n_rejected;
    }
    h = optimal_step(dt, ratio);
  }
}

}  // namespace nmode
}  // namespace odekern
