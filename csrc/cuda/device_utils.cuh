// Device helpers shared by the CUDA sweeps: math overloads for float and double, block-wide
// reductions, the mergeable log-sum-exp accumulator, and how a tile is split into chunks.
#pragma once

#include <c10/macros/Macros.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace hail_ext::cuda {

// Threads of every sweep block; a multiple of the warp size.
constexpr int kThreads = 256;
constexpr int kWarp = 32;
// Enough blocks per launch to fill an H100/H200 several times over.
constexpr int64_t kTargetBlocks = 2048;
// Fewer items per block would make the per-block reductions and partials dominate.
constexpr int64_t kMinChunkItems = 2048;
constexpr int64_t kMaxGridY = 65535;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// How the items [0, cols) of one tile row are split across blocks: `count` chunks of `items`.
struct Chunks {
  int64_t items, count;
};

inline Chunks split_items(int64_t row_blocks, int64_t cols) {
  const int64_t wanted = ceil_div(kTargetBlocks, std::max<int64_t>(row_blocks, 1));
  const int64_t most = std::min(ceil_div(cols, kMinChunkItems), kMaxGridY);
  const int64_t count = std::max<int64_t>(std::min(wanted, most), 1);
  const int64_t items = ceil_div(cols, count);
  return {items, ceil_div(cols, items)};
}

// ---- math in the accumulation type -------------------------------------------------------

__device__ __forceinline__ float exp_of(float x) { return expf(x); }
__device__ __forceinline__ double exp_of(double x) { return exp(x); }
__device__ __forceinline__ float expm1_of(float x) { return expm1f(x); }
__device__ __forceinline__ double expm1_of(double x) { return expm1(x); }
__device__ __forceinline__ float log_of(float x) { return logf(x); }
__device__ __forceinline__ double log_of(double x) { return log(x); }

template <typename T>
__device__ __forceinline__ bool is_nan(T x) {
  return x != x;
}

// ---- block-wide sums -----------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    x += __shfl_down_sync(0xffffffffu, x, offset);
  }
  return x;
}

// The sum of x over the block, in thread 0. `smem` holds kThreads / kWarp values; the leading
// barrier lets successive calls reuse it.
template <typename T>
__device__ T block_sum(T x, T* smem) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  x = warp_sum(x);
  __syncthreads();
  if (lane == 0) smem[warp] = x;
  __syncthreads();
  if (warp == 0) {
    x = lane < static_cast<int>(blockDim.x) / kWarp ? smem[lane] : T(0);
    x = warp_sum(x);
  }
  return x;
}

// ---- the log-sum-exp accumulator ------------------------------------------------------------

// A set of logits summarised as (max, the lowest item index holding it, rest = sum over the
// other items of exp(z - max)). Merging is associative, so threads, warps, blocks and tiles
// combine partial sets in any grouping; an empty set has amax == kNoItem. A NaN anywhere makes
// max and rest NaN, so the loss of the row comes out NaN rather than silently finite.
constexpr int64_t kNoItem = std::numeric_limits<int64_t>::max();

template <typename T>
struct LseAcc {
  T max, rest;
  int64_t amax;
};

template <typename T>
__device__ __forceinline__ LseAcc<T> lse_empty() {
  return {-std::numeric_limits<T>::infinity(), T(0), kNoItem};
}

template <typename T>
__device__ __forceinline__ LseAcc<T> lse_merge(const LseAcc<T>& a, const LseAcc<T>& b) {
  if (b.amax == kNoItem) return a;
  if (a.amax == kNoItem) return b;
  if (is_nan(a.max) || is_nan(b.max)) {
    const T nan = std::numeric_limits<T>::quiet_NaN();
    return {nan, nan, a.amax < b.amax ? a.amax : b.amax};
  }
  const bool b_wins = b.max > a.max || (b.max == a.max && b.amax < a.amax);
  const LseAcc<T>& win = b_wins ? b : a;
  const LseAcc<T>& lose = b_wins ? a : b;
  // The loser's maximum joins the rest; a loser of -inf logits only adds zeros (and would give
  // exp(-inf + inf) = NaN if computed).
  const T joined = lose.max == -std::numeric_limits<T>::infinity()
                       ? T(0)
                       : (lose.rest + T(1)) * exp_of(lose.max - win.max);
  return {win.max, win.rest + joined, win.amax};
}

template <typename T>
__device__ __forceinline__ LseAcc<T> lse_shfl_down(const LseAcc<T>& x, int offset) {
  LseAcc<T> y;
  y.max = __shfl_down_sync(0xffffffffu, x.max, offset);
  y.rest = __shfl_down_sync(0xffffffffu, x.rest, offset);
  y.amax =
      static_cast<int64_t>(__shfl_down_sync(0xffffffffu, static_cast<long long>(x.amax), offset));
  return y;
}

// The merge of every thread's accumulator, in thread 0. `smem` holds kThreads / kWarp values.
template <typename T>
__device__ LseAcc<T> block_lse(LseAcc<T> x, LseAcc<T>* smem) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  for (int offset = kWarp / 2; offset > 0; offset /= 2) x = lse_merge(x, lse_shfl_down(x, offset));
  __syncthreads();
  if (lane == 0) smem[warp] = x;
  __syncthreads();
  if (warp == 0) {
    x = lane < static_cast<int>(blockDim.x) / kWarp ? smem[lane] : lse_empty<T>();
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      x = lse_merge(x, lse_shfl_down(x, offset));
    }
  }
  return x;
}

}  // namespace hail_ext::cuda
