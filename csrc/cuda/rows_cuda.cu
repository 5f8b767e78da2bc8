// Row weights and validity on CUDA, with the target range and row weights checked on the device.
//
// Work split: a grid-stride loop, one thread per row. A thread records a bad row with atomicMin
// on the first bad index, so the host learns the lowest one with a single copy of three numbers;
// each block adds its count of valid rows with one atomicAdd.
#include <c10/cuda/CUDAException.h>

#include "device_utils.cuh"
#include "sweeps_cuda.h"

namespace hail_ext::cuda {
namespace {

constexpr int64_t kMaxRowBlocks = 1024;

template <typename T>
__device__ __forceinline__ bool finite_nonnegative(T w) {
  return w >= T(0) && w <= std::numeric_limits<T>::max();  // false for NaN and +inf
}

template <typename T>
__global__ void read_rows_kernel(const int64_t* target, const T* row_weight, int64_t num_rows,
                                 int64_t num_items, int64_t ignore_index, T* weight, bool* valid,
                                 unsigned long long* facts) {
  __shared__ unsigned long long smem[kThreads / kWarp];
  unsigned long long count = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;

  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < num_rows;
       n += stride) {
    const int64_t t = target[n];
    const bool ignored = t == ignore_index;
    if (!ignored && (t < 0 || t >= num_items)) {
      atomicMin(&facts[0], static_cast<unsigned long long>(n));
    }
    const T w = row_weight != nullptr ? row_weight[n] : T(1);
    if (!finite_nonnegative(w)) atomicMin(&facts[1], static_cast<unsigned long long>(n));
    const T kept = ignored ? T(0) : w;
    weight[n] = kept;
    valid[n] = kept > T(0);
    count += kept > T(0) ? 1 : 0;
  }

  count = block_sum(count, smem);
  if (threadIdx.x == 0 && count > 0) atomicAdd(&facts[2], count);
}

}  // namespace

template <typename T>
void read_rows(const int64_t* target, const T* row_weight, int64_t num_rows, int64_t num_items,
               int64_t ignore_index, T* weight, bool* valid, int64_t* facts, cudaStream_t stream) {
  if (num_rows == 0) return;
  const auto blocks = static_cast<unsigned>(std::min(ceil_div(num_rows, kThreads), kMaxRowBlocks));
  // facts holds non-negative int64 values, whose bits order the same as unsigned ones.
  read_rows_kernel<T><<<blocks, kThreads, 0, stream>>>(
      target, row_weight, num_rows, num_items, ignore_index, weight, valid,
      reinterpret_cast<unsigned long long*>(facts));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template void read_rows<float>(const int64_t*, const float*, int64_t, int64_t, int64_t, float*,
                               bool*, int64_t*, cudaStream_t);
template void read_rows<double>(const int64_t*, const double*, int64_t, int64_t, int64_t, double*,
                                bool*, int64_t*, cudaStream_t);

}  // namespace hail_ext::cuda
