// The CPU paths of nmode_solve that live in their own translation units (each is a large set
// of ISA-cloned template instantiations; separate files compile in parallel). Defined and
// instantiated for float and double in nmode_solve_cpu_adjoint.cpp and
// nmode_solve_cpu_per_element.cpp; called by nmode_solve_cpu.cpp. Pointers are to flat
// contiguous buffers: y0 [N], g [G] (element e uses g[e % G]), per-element outputs [N].
#pragma once

#include <cstdint>

namespace odekern {
namespace nmode {
namespace cpu {

// Continuous adjoint backward from the forward's y(t1) (y1): grad_y0 and the per-element grad_g
// (gfull, not yet summed over g's repeats). Raises on a failed per-element controller.
template <typename T>
void adjoint_backward(const T* y0, const T* y1, const T* g, int64_t N, int64_t G, const T* gy1, const T* gf0,
                      const T* gf1, int method, double t0, double t1, double step_size, double rtol, double atol,
                      int64_t max_steps, T* gy0, T* gfull);

// dopri5 with per-element step control: forward (f0/f1 may be null) and its exact backward
// (gf0/gf1 may be null; gfull as above). Raise on a failed controller.
template <typename T>
void per_element_forward(const T* y0, const T* g, int64_t N, int64_t G, double t0, double t1,
                         double rtol, double atol, int64_t max_steps, T* y1, T* f0, T* f1);
template <typename T>
void per_element_backward(const T* y0, const T* g, int64_t N, int64_t G, double t0, double t1,
                          double rtol, double atol, int64_t max_steps, const T* gy1, const T* gf0,
                          const T* gf1, T* gy0, T* gfull);

}  // namespace cpu
}  // namespace nmode
}  // namespace odekern
