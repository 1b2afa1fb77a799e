// Module init for odekern._C. Ops register themselves with TORCH_LIBRARY_FRAGMENT(odekern_C, ...)
// in their own csrc/ops/<op>/ files (schema in <op>.cpp, kernels in <op>_cpu.cpp /
// <op>_cuda.cpp); this file only exposes build facts to Python.
#include <torch/extension.h>

#ifndef ODEKERN_TORCH_VERSION
#define ODEKERN_TORCH_VERSION "unknown"
#endif

namespace {

bool with_cuda() {
#ifdef ODEKERN_WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::string cpu_isa() {
  // The clone a target_clones hot loop will pick on this CPU (see csrc/include/odekern/macros.h).
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "avx512f";
  if (__builtin_cpu_supports("avx2")) return "avx2";
  return "x86-64 baseline";
#else
  return "generic";
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "odekern C++ kernels (ops are registered under torch.ops.odekern_C)";
  m.def("with_cuda", &with_cuda, "True if the CUDA kernels were compiled in");
  m.def("cpu_isa", &cpu_isa, "Instruction set the CPU kernels dispatch to on this machine");
  m.attr("torch_version") = ODEKERN_TORCH_VERSION;
}
