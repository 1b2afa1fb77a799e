// Schema of the nmODE solve ops in the odekern_C library. Kernels: nmode_solve_cpu.cpp (CPU)
// and nmode_solve_cuda.cpp (CUDA). The Python custom op odekern::nmode_solve
// (odekern/ops/nmode_solve/op.py) calls these through odekern/ops/nmode_solve/cpp.py.
//
// Layout contract (see odekern/ops/nmode_solve/config.py): y0 [N] and g [G] contiguous 1-D,
// N % G == 0, element e uses g[e % G]; stats is a float64 CPU tensor
// [n_accepted, n_rejected, theta, dt_0, ..., dt_{n-1}]; y1 (the forward's y(t1), where the
// continuous adjoint starts) is required for gradient="adjoint" and unused otherwise.
#include <torch/library.h>

#include <odekern/macros.h>

TORCH_LIBRARY_FRAGMENT(ODEKERN_LIBRARY_NS, m) {
  m.def(
      "nmode_solve_fwd(Tensor y0, Tensor g, float t0, float t1, str method, float step_size, "
      "float rtol, float atol, str control, int max_num_steps, bool need_f) "
      "-> (Tensor y1, Tensor f0, Tensor f1, Tensor stats)");
  m.def(
      "nmode_solve_bwd(Tensor grad_y1, Tensor? grad_f0, Tensor? grad_f1, Tensor y0, Tensor g, "
      "Tensor? y1, Tensor stats, float t0, float t1, str method, float step_size, float rtol, float atol, "
      "str control, str gradient, int max_num_steps) -> (Tensor grad_y0, Tensor grad_g)");
}
