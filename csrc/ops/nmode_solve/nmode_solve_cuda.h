// Torch-free interface between the CUDA binding (nmode_solve_cuda.cpp) and the kernels and
// launchers (nmode_solve_cuda.cu): raw pointers, sizes, a stream, and an error string
// (empty = success) instead of exceptions.
#pragma once

#include <odekern/cuda_runtime_api.h>

#include <cstdint>
#include <string>
#include <vector>

namespace odekern {
namespace nmode {
namespace cuda {

struct ForwardArgs {
  const void* y0;       // [N]
  const void* g;        // [G], element e uses g[e % G]
  int64_t N, G;
  bool is_double;
  int method;           // odekern::nmode::Method
  bool global;          // dopri5 step control
  double t0, t1, rtol, atol;
  int64_t max_steps;
  const double* dts;    // fixed grid (device memory), n_fixed steps
  int64_t n_fixed;
  void* y1;             // [N]
  void* f0;             // [N] or nullptr
  void* f1;             // [N] or nullptr
  void* scratch;        // global control: 4 * N elements of the state's dtype
  double* partials;     // global control: global_partials_needed(N) doubles
  int* status;          // one int
};

struct BackwardArgs {
  const void* y0;
  const void* y1;       // the forward's y(t1) (the adjoint's start), or nullptr: solved for again
  const void* g;
  const void* gy1;
  const void* gf0;      // or nullptr
  const void* gf1;      // or nullptr
  int64_t N, G;
  bool is_double;
  int method;
  bool list_mode;       // fixed grid or global control: the step list below
  bool adjoint;
  double t0, t1, rtol, atol;
  int64_t max_steps;
  const double* dts;    // device memory
  int64_t n;
  double theta;
  const double* adj_dts;  // device memory (fixed-grid adjoint)
  int64_t adj_n;
  void* gy0;            // [N]
  void* gg;             // [G]
  int* status;
};

int64_t global_partials_needed(int64_t N);
// dts / n_rejected / theta receive the accepted step sequence of global control.
std::string forward(const ForwardArgs& args, cudaStream_t stream, std::vector<double>* dts,
                    int64_t* n_rejected, double* theta);
std::string backward(const BackwardArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace nmode
}  // namespace odekern
