// What the torch bindings of the CUDA kernels (csrc/ops/*/<op>_cuda.cpp) use from c10's CUDA
// layer: device guard, current stream, launch check, and where the kernels are registered.
//
// Real builds: c10/cuda, and ODEKERN_CUDA_IMPL(m) registers for the CUDA dispatch key of
// odekern_C. CUDA emulation builds (tests/cuda_emulation, -DODEKERN_CUDA_EMULATION): the same
// binding code registers the emulated kernels for CPU tensors in the test-only library
// odekern_cuda_emu (schemas from the same <op>.cpp files, see ODEKERN_LIBRARY_NS).
#pragma once

#include <torch/library.h>

#include <odekern/cuda_runtime_api.h>
#include <odekern/macros.h>

#if defined(ODEKERN_CUDA_EMULATION)
#include <odekern_emu/torch_binding.h>
#define ODEKERN_CUDA_IMPL(m) TORCH_LIBRARY_IMPL(ODEKERN_LIBRARY_NS, CPU, m)
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define ODEKERN_CUDA_IMPL(m) TORCH_LIBRARY_IMPL(ODEKERN_LIBRARY_NS, CUDA, m)
#endif
