// Kernels with planted bugs, compiled only here, to show that the emulation catches what a GPU
// would turn into silent corruption or a hang: a write one past the end, a block reduction
// missing the __syncthreads after filling shared memory, and an early return before a
// barrier. block_sum is the correct counterpart (dynamic shared memory, warp shuffles), so
// the checks are also shown not to fire on correct code. Launched with 128 threads per block.
#include <odekern/cuda_launch.h>

#include <string>

namespace odekern_emu {
namespace {

using odekern::global_ptr;
constexpr int kThreads = 128;

int blocks(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

__global__ void planted_oob_write_kernel(global_ptr<float> out, int64_t n) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i <= n) out[i] = static_cast<float>(i);  // planted: `<=` writes out[n]
}

__global__ void planted_race_kernel(global_ptr<const float> x, global_ptr<float> out, int64_t n) {
  ODEKERN_SHARED_ARRAY(float, buf, kThreads);
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  buf[threadIdx.x] = i < n ? x[i] : 0.0f;
  // planted: no __syncthreads() here, so the first round reads neighbours' unwritten slots
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = buf[0];
}

__global__ void planted_divergent_barrier_kernel(global_ptr<const float> x, global_ptr<float> out, int64_t n) {
  ODEKERN_SHARED_ARRAY(float, buf, kThreads);
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;  // planted: threads past n leave before the block's barrier
  buf[threadIdx.x] = x[i];
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int t = 0; t < kThreads; ++t) total += buf[t];
    out[blockIdx.x] = total;
  }
}

__global__ void block_sum_kernel(global_ptr<const float> x, global_ptr<float> out, int64_t n) {
  ODEKERN_DYNAMIC_SHARED(float, warp_sums);
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  float v = i < n ? x[i] : 0.0f;
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (unsigned w = 0; w < blockDim.x / 32; ++w) total += warp_sums[w];
    out[blockIdx.x] = total;
  }
}

}  // namespace

void planted_oob_write(float* out, int64_t n) {
  odekern::launch_kernel<planted_oob_write_kernel>(blocks(n + 1), kThreads, 0, nullptr, out, n);
}
void planted_race(const float* x, float* out, int64_t n) {
  odekern::launch_kernel<planted_race_kernel>(blocks(n), kThreads, 0, nullptr, x, out, n);
}
void planted_divergent_barrier(const float* x, float* out, int64_t n) {
  odekern::launch_kernel<planted_divergent_barrier_kernel>(blocks(n), kThreads, 0, nullptr, x, out, n);
}
void block_sum(const float* x, float* out, int64_t n) {
  odekern::launch_kernel<block_sum_kernel>(blocks(n), kThreads, kThreads / 32 * sizeof(float), nullptr, x, out, n);
}

// "name\tcount" lines of every kernel instantiation launched so far in this process.
std::string launch_summary() {
  std::string s;
  for (const auto& [name, count] : launch_counts()) s += name + "\t" + std::to_string(count) + "\n";
  return s;
}

}  // namespace odekern_emu
