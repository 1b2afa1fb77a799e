// The one way odekern launches a CUDA kernel, and declares shared memory, so every .cu source
// compiles both with nvcc and as host C++ against the CUDA-on-CPU emulation of the tests
// (tests/cuda_emulation, -DODEKERN_CUDA_EMULATION), which runs the same kernels over the same
// launch configuration on CPU threads-as-fibers in CI.
//
//   odekern::launch_kernel<my_kernel<T, 4>>(grid, block, smem_bytes, stream, args...);
//   ODEKERN_SHARED_ARRAY(double, buf, 128);     // __shared__ double buf[128];
//   ODEKERN_DYNAMIC_SHARED(float, tile);        // the launch's dynamic shared memory as float*
//
// The kernel is a template argument so the emulation can name it in its error messages; the
// arguments are converted to the kernel's parameter types as in a `<<<...>>>` launch.
#pragma once

#include <cstddef>
#include <utility>

#include <odekern/cuda_runtime_api.h>
#include <odekern/global_ptr.h>

#if defined(ODEKERN_CUDA_EMULATION)
#include <odekern_emu/cuda_emu.h>  // tests/cuda_emulation/include
#endif

// Only device compilations (nvcc, or the emulation) see the launcher; a host .cpp that includes
// a kernel interface header gets the runtime API alone.
#if defined(__CUDACC__) || defined(ODEKERN_CUDA_EMULATION)
namespace odekern {

template <auto Kernel, typename... Args>
inline void launch_kernel(dim3 grid, dim3 block, size_t smem_bytes, cudaStream_t stream,
                          Args&&... args) {
#if defined(ODEKERN_CUDA_EMULATION)
  ::odekern_emu::launch<Kernel>(grid, block, smem_bytes, stream, std::forward<Args>(args)...);
#else
  Kernel<<<grid, block, smem_bytes, stream>>>(std::forward<Args>(args)...);
#endif
}

}  // namespace odekern
#endif

#if defined(ODEKERN_CUDA_EMULATION)
#define ODEKERN_SHARED_ARRAY(T, name, n) ODEKERN_EMU_SHARED_ARRAY(T, name, n)
#define ODEKERN_DYNAMIC_SHARED(T, name) ODEKERN_EMU_DYNAMIC_SHARED(T, name)
#else
#define ODEKERN_SHARED_ARRAY(T, name, n) __shared__ T name[n]
#define ODEKERN_DYNAMIC_SHARED(T, name)                                 \
  extern __shared__ __align__(16) unsigned char odekern_dynamic_smem_[]; \
  T* name = reinterpret_cast<T*>(odekern_dynamic_smem_)
#endif
