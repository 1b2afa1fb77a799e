// Stand-ins for the c10 CUDA helpers the torch bindings of the kernels use
// (csrc/include/odekern/cuda_binding.h): in the emulation "device" tensors are CPU tensors, so
// the guard does nothing, the stream is the default one, and the launch check turns the
// emulation's recorded error into the same c10::Error a real failed launch raises.
#pragma once

#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include "runtime_api.h"

namespace c10 {
namespace cuda {

struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};

struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
  operator cudaStream_t() const { return nullptr; }
};

inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }

}  // namespace cuda
}  // namespace c10

#define C10_CUDA_KERNEL_LAUNCH_CHECK()                                                       \
  do {                                                                                       \
    const cudaError_t odekern_emu_err_ = cudaGetLastError();                                 \
    TORCH_CHECK(odekern_emu_err_ == cudaSuccess, "CUDA error: ", cudaGetErrorString(odekern_emu_err_)); \
  } while (0)
