// The CUDA runtime API (cudaStream_t, cudaMemcpyAsync, errors) for odekern's CUDA sources: the
// real <cuda_runtime.h>, or the CUDA emulation's (tests/cuda_emulation) when the sources are
// compiled as host C++ with -DODEKERN_CUDA_EMULATION.
#pragma once

#if defined(ODEKERN_CUDA_EMULATION)
#include <odekern_emu/runtime_api.h>
#else
#include <cuda_runtime.h>
#endif
