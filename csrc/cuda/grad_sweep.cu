// Sweep 3 on CUDA: dL/dz of every peer over one item tile, written for the gradient products.
//
// Work split: block (r, c) takes chunk c of row r for all K peers (grid rows x chunks, kThreads
// threads striding over items). A thread reads every peer's logit of its item v before it writes
// any dz of that item and no other thread touches item v of row r, so dz may overwrite the
// logits in place. Nothing is reduced, so the chunks are independent. The per-(peer, row)
// coefficients sit in registers (K bounded at compile time by Bound: 1, 2, 4, 8 or 16).
//
//   dz_k(v) = a_k (p_k(v) - [v == t]) + b_k (c_k(v) p_k(v) / (1 - p_k(v)) - S_k p_k(v))
//
// with c_k(t) = 0; at a peer's arg-max item p / (1 - p) and 1 - p come from the first sweep's
// exact values, as on the CPU.
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include "device_utils.cuh"
#include "sweeps_cuda.h"

namespace hail_ext::cuda {
namespace {

template <typename T, typename Out, int Bound>
__global__ void grad_kernel(Tile<T> tile, RowStats<T> stats, const T* coef_a, const T* coef_b,
                            const T* s_sum, int64_t chunk_items, Out* dz) {
  const int64_t r = blockIdx.x, chunk = blockIdx.y;
  const int64_t n = tile.row0 + r;
  const int num_peers = static_cast<int>(tile.num_peers);
  const int64_t begin = chunk * chunk_items;
  const int64_t end = begin + chunk_items < tile.cols ? begin + chunk_items : tile.cols;

  if (!tile.active[n]) {
    for (int64_t v = begin + threadIdx.x; v < end; v += blockDim.x) {
      for (int k = 0; k < num_peers; ++k) dz[(k * tile.rows + r) * tile.cols + v] = Out(0);
    }
    return;
  }

  const bool with_peers = Bound > 1 && coef_b != nullptr;
  const bool gamma_one = stats.gamma == T(1);
  const T inv_others = num_peers > 1 ? T(1) / T(num_peers - 1) : T(0);
  const int64_t t_local = tile.target[n] - tile.item0;

  T lse[Bound], a[Bound], b[Bound], s[Bound], log1mp_amax[Bound], ratio_amax[Bound];
  int64_t amax_local[Bound], row[Bound];
#pragma unroll
  for (int j = 0; j < Bound; ++j) {
    if (j < num_peers) {
      const int64_t at = j * tile.num_rows + n;
      row[j] = (j * tile.rows + r) * tile.cols;
      lse[j] = stats.lse[at];
      a[j] = coef_a[at];
      b[j] = with_peers ? coef_b[at] : T(0);
      s[j] = with_peers ? s_sum[at] : T(0);
      log1mp_amax[j] = stats.log1mp_amax[at];
      ratio_amax[j] = stats.ratio_amax[at];
      amax_local[j] = stats.amax[at] - tile.item0;
    }
  }

  for (int64_t v = begin + threadIdx.x; v < end; v += blockDim.x) {
    T u[Bound], qg[Bound];
#pragma unroll
    for (int j = 0; j < Bound; ++j) {
      if (j < num_peers) {
        u[j] = tile.logits[row[j] + v] - lse[j];
        if (with_peers) qg[j] = exp_of(gamma_one ? u[j] : stats.gamma * u[j]);
      }
    }
    const bool is_target = v == t_local;

#pragma unroll
    for (int k = 0; k < Bound; ++k) {
      if (k >= num_peers) continue;
      const bool is_amax = v == amax_local[k];
      const T p = (with_peers && gamma_one) ? qg[k] : exp_of(u[k]);
      T d;
      if (is_target) {
        // p - 1 to full precision even when the target holds almost all the mass.
        const T p_minus_1 = is_amax ? -exp_of(log1mp_amax[k]) : expm1_of(u[k]);
        d = a[k] * p_minus_1;
        if (with_peers) d -= b[k] * s[k] * p;
      } else {
        d = a[k] * p;
        if (with_peers) {
          T c = T(0);
#pragma unroll
          for (int j = 0; j < Bound; ++j) c += (j < num_peers && j != k) ? qg[j] : T(0);
          c *= inv_others;
          const T ratio = is_amax ? ratio_amax[k] : p / -expm1_of(u[k]);
          const T peer_term = c > T(0) ? c * ratio : T(0);  // keeps 0 * inf out
          d += b[k] * (peer_term - s[k] * p);
        }
      }
      dz[row[k] + v] = static_cast<Out>(d);
    }
  }
}

template <typename T, typename Out, int Bound>
void launch(const Tile<T>& tile, const RowStats<T>& stats, const T* coef_a, const T* coef_b,
            const T* s_sum, Out* dz, cudaStream_t stream) {
  const Chunks chunks = split_items(tile.rows, tile.cols);
  const dim3 grid(static_cast<unsigned>(tile.rows), static_cast<unsigned>(chunks.count));
  grad_kernel<T, Out, Bound><<<grid, kThreads, 0, stream>>>(tile, stats, coef_a, coef_b, s_sum,
                                                            chunks.items, dz);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

template <typename T, typename Out>
void grad_sweep(const Tile<T>& tile, const RowStats<T>& stats, const T* coef_a, const T* coef_b,
                const T* s_sum, Out* dz, cudaStream_t stream) {
  TORCH_CHECK(tile.num_peers >= 1 && tile.num_peers <= kMaxPeers, "grad_sweep needs 1 <= K <= ",
              kMaxPeers, " peers, got ", tile.num_peers);
  if (tile.rows == 0 || tile.cols == 0) return;
  if (tile.num_peers == 1) {
    launch<T, Out, 1>(tile, stats, coef_a, nullptr, s_sum, dz, stream);
  } else if (tile.num_peers <= 2) {
    launch<T, Out, 2>(tile, stats, coef_a, coef_b, s_sum, dz, stream);
  } else if (tile.num_peers <= 4) {
    launch<T, Out, 4>(tile, stats, coef_a, coef_b, s_sum, dz, stream);
  } else if (tile.num_peers <= 8) {
    launch<T, Out, 8>(tile, stats, coef_a, coef_b, s_sum, dz, stream);
  } else {
    launch<T, Out, 16>(tile, stats, coef_a, coef_b, s_sum, dz, stream);
  }
}

#define HAIL_INSTANTIATE_GRAD_SWEEP(T, Out)                                                  \
  template void grad_sweep<T, Out>(const Tile<T>&, const RowStats<T>&, const T*, const T*, \
                                   const T*, Out*, cudaStream_t);

HAIL_INSTANTIATE_GRAD_SWEEP(float, float)
HAIL_INSTANTIATE_GRAD_SWEEP(float, c10::Half)
HAIL_INSTANTIATE_GRAD_SWEEP(float, c10::BFloat16)
HAIL_INSTANTIATE_GRAD_SWEEP(double, double)

}  // namespace hail_ext::cuda
