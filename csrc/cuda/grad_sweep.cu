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
// with c_k(t) = 0 and S_k = s_rest_k + s_amax_k. As on the CPU, p - 1 at the target comes from
// the first sweep's exact log(1 - p) when the target is the arg-max item, and the peers' term at
// the arg-max item off the target is written p (c - s_rest), since s_amax = c p / (1 - p) there.
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
                            const T* s_rest, const T* s_amax, const T* dz_scale,
                            int64_t chunk_items, Out* dz) {
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
  const T scale = dz_scale != nullptr ? *dz_scale : T(1);

  T max[Bound], log_norm[Bound], a[Bound], b[Bound], s_other[Bound], s_all[Bound];
  T log1mp_amax[Bound];
  int64_t amax_local[Bound], row[Bound];
#pragma unroll
  for (int j = 0; j < Bound; ++j) {
    if (j < num_peers) {
      const int64_t at = j * tile.num_rows + n;
      row[j] = (j * tile.rows + r) * tile.cols;
      max[j] = stats.max[at];
      log_norm[j] = stats.log_norm[at];
      a[j] = coef_a[at];
      b[j] = with_peers ? coef_b[at] : T(0);
      s_other[j] = with_peers ? s_rest[at] : T(0);
      s_all[j] = with_peers ? s_rest[at] + s_amax[at] : T(0);
      log1mp_amax[j] = stats.log1mp_amax[at];
      amax_local[j] = stats.amax[at] - tile.item0;
    }
  }

  for (int64_t v = begin + threadIdx.x; v < end; v += blockDim.x) {
    T u[Bound], qg[Bound];
#pragma unroll
    for (int j = 0; j < Bound; ++j) {
      if (j < num_peers) {
        u[j] = (tile.logits[row[j] + v] - max[j]) - log_norm[j];
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
        if (with_peers) d -= b[k] * s_all[k] * p;
      } else {
        d = a[k] * p;
        if (with_peers) {
          T c = T(0);
#pragma unroll
          for (int j = 0; j < Bound; ++j) c += (j < num_peers && j != k) ? qg[j] : T(0);
          c *= inv_others;
          if (is_amax) {
            d += b[k] * p * (c - s_other[k]);
          } else {
            d += b[k] * (c * (p / -expm1_of(u[k])) - s_all[k] * p);
          }
        }
      }
      dz[row[k] + v] = static_cast<Out>(d * scale);
    }
  }
}

template <typename T, typename Out, int Bound>
void launch(const Tile<T>& tile, const RowStats<T>& stats, const T* coef_a, const T* coef_b,
            const T* s_rest, const T* s_amax, const T* dz_scale, Out* dz, cudaStream_t stream) {
  const Chunks chunks = split_items(tile.rows, tile.cols);
  const dim3 grid(static_cast<unsigned>(tile.rows), static_cast<unsigned>(chunks.count));
  grad_kernel<T, Out, Bound><<<grid, kThreads, 0, stream>>>(tile, stats, coef_a, coef_b, s_rest,
                                                            s_amax, dz_scale, chunks.items, dz);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

template <typename T, typename Out>
void grad_sweep(const Tile<T>& tile, const RowStats<T>& stats, const T* coef_a, const T* coef_b,
                const T* s_rest, const T* s_amax, const T* dz_scale, Out* dz, cudaStream_t stream) {
  TORCH_CHECK(tile.num_peers >= 1 && tile.num_peers <= kMaxPeers,
              "grad_sweep needs 1 <= K <= ", kMaxPeers, " peers, got ", tile.num_peers);
  if (tile.rows == 0 || tile.cols == 0) return;
  if (tile.num_peers == 1) {
    launch<T, Out, 1>(tile, stats, coef_a, nullptr, s_rest, s_amax, dz_scale, dz, stream);
  } else if (tile.num_peers <= 2) {
    launch<T, Out, 2>(tile, stats, coef_a, coef_b, s_rest, s_amax, dz_scale, dz, stream);
  } else if (tile.num_peers <= 4) {
    launch<T, Out, 4>(tile, stats, coef_a, coef_b, s_rest, s_amax, dz_scale, dz, stream);
  } else if (tile.num_peers <= 8) {
    launch<T, Out, 8>(tile, stats, coef_a, coef_b, s_rest, s_amax, dz_scale, dz, stream);
  } else {
    launch<T, Out, 16>(tile, stats, coef_a, coef_b, s_rest, s_amax, dz_scale, dz, stream);
  }
}

#define HAIL_INSTANTIATE_GRAD_SWEEP(T, Out)                                                \
  template void grad_sweep<T, Out>(const Tile<T>&, const RowStats<T>&, const T*, const T*, \
                                   const T*, const T*, const T*, Out*, cudaStream_t);

HAIL_INSTANTIATE_GRAD_SWEEP(float, float)
HAIL_INSTANTIATE_GRAD_SWEEP(float, c10::Half)
HAIL_INSTANTIATE_GRAD_SWEEP(float, c10::BFloat16)
HAIL_INSTANTIATE_GRAD_SWEEP(double, double)

}  // namespace hail_ext::cuda
