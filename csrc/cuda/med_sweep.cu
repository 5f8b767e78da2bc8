// Sweep 2 on CUDA: the peers' sums of every row, MED = sum c log(1 - p) and S = sum c p / (1 - p).
//
// Work split: block (r, c) takes chunk c of row r for all K peers at once (grid rows x chunks,
// kThreads threads striding over items), since c_k(v) needs every other peer's probability of
// the same item v. A thread keeps 2K running sums in registers (K is bounded at compile time by
// Bound, the next of 2, 4, 8, 16); the block reduces them and thread 0 writes one partial per
// chunk. A second kernel, one thread per (peer, row), adds the chunks in order to the [K, N]
// sums. The target item (c = 0) is skipped; at a peer's arg-max item, where 1 - p may have no
// digits left, log(1 - p) and p / (1 - p) come from the first sweep's exact values, and that
// item's term of S goes to s_amax, written directly by the one thread that meets it.
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include "device_utils.cuh"
#include "sweeps_cuda.h"

namespace hail_ext::cuda {
namespace {

template <typename T, int Bound>
__global__ void med_partial_kernel(Tile<T> tile, RowStats<T> stats, int64_t chunk_items,
                                   T* partials, T* s_amax) {
  __shared__ T smem[kThreads / kWarp];
  const int64_t r = blockIdx.x, chunk = blockIdx.y;
  const int64_t n = tile.row0 + r;
  if (!tile.active[n]) return;  // the whole block leaves together

  const int num_peers = static_cast<int>(tile.num_peers);
  const T inv_others = T(1) / T(num_peers - 1);
  const bool gamma_one = stats.gamma == T(1);
  const int64_t begin = chunk * chunk_items;
  const int64_t end = begin + chunk_items < tile.cols ? begin + chunk_items : tile.cols;
  const int64_t t_local = tile.target[n] - tile.item0;

  const T* z[Bound];
  T max[Bound], log_norm[Bound], med_acc[Bound], s_acc[Bound];
  int64_t amax_local[Bound];
#pragma unroll
  for (int j = 0; j < Bound; ++j) {
    med_acc[j] = T(0);
    s_acc[j] = T(0);
    if (j < num_peers) {
      z[j] = tile.logits + (j * tile.rows + r) * tile.cols;
      max[j] = stats.max[j * tile.num_rows + n];
      log_norm[j] = stats.log_norm[j * tile.num_rows + n];
      amax_local[j] = stats.amax[j * tile.num_rows + n] - tile.item0;
    }
  }

  for (int64_t v = begin + threadIdx.x; v < end; v += blockDim.x) {
    if (v == t_local) continue;  // c(target) = 0
    T u[Bound], qg[Bound];
#pragma unroll
    for (int j = 0; j < Bound; ++j) {
      if (j < num_peers) {
        u[j] = (z[j][v] - max[j]) - log_norm[j];
        qg[j] = exp_of(gamma_one ? u[j] : stats.gamma * u[j]);
      }
    }
#pragma unroll
    for (int k = 0; k < Bound; ++k) {
      if (k >= num_peers) continue;
      T c = T(0);
#pragma unroll
      for (int j = 0; j < Bound; ++j) c += (j < num_peers && j != k) ? qg[j] : T(0);
      c *= inv_others;
      if (v == amax_local[k]) {
        if (!(c > T(0))) continue;  // keeps 0 * inf out when the item holds all the mass
        const int64_t at = k * tile.num_rows + n;
        med_acc[k] += c * stats.log1mp_amax[at];
        s_amax[at] += c * stats.ratio_amax[at];  // the only thread of the launch at this item
      } else {
        const T one_minus_p = -expm1_of(u[k]);  // >= 1/2 off the arg-max item
        med_acc[k] += c * log_of(one_minus_p);
        s_acc[k] += c * (gamma_one ? qg[k] : exp_of(u[k])) / one_minus_p;
      }
    }
  }

  const int64_t plane = tile.num_peers * tile.rows * gridDim.y;  // one [K, rows, chunks] array
#pragma unroll
  for (int k = 0; k < Bound; ++k) {
    if (k >= num_peers) break;
    const T med_total = block_sum(med_acc[k], smem);
    const T s_total = block_sum(s_acc[k], smem);
    if (threadIdx.x == 0) {
      const int64_t at = (k * tile.rows + r) * gridDim.y + chunk;
      partials[at] = med_total;
      partials[plane + at] = s_total;
    }
  }
}

// One thread per (peer, row): the chunks' partial sums, in order, into med_sum and s_rest.
template <typename T>
__global__ void med_merge_kernel(Tile<T> tile, int64_t num_chunks, const T* partials, T* med_sum,
                                 T* s_rest) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t pairs = tile.num_peers * tile.rows;
  if (index >= pairs) return;
  const int64_t k = index / tile.rows, r = index % tile.rows;
  const int64_t n = tile.row0 + r;
  if (!tile.active[n]) return;

  T med_total = T(0), s_total = T(0);
  for (int64_t c = 0; c < num_chunks; ++c) {
    med_total += partials[index * num_chunks + c];
    s_total += partials[pairs * num_chunks + index * num_chunks + c];
  }
  med_sum[k * tile.num_rows + n] += med_total;
  s_rest[k * tile.num_rows + n] += s_total;
}

template <typename T, int Bound>
void launch_partials(const Tile<T>& tile, const RowStats<T>& stats, const Chunks& chunks,
                     T* partials, T* s_amax, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(tile.rows), static_cast<unsigned>(chunks.count));
  med_partial_kernel<T, Bound>
      <<<grid, kThreads, 0, stream>>>(tile, stats, chunks.items, partials, s_amax);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

template <typename T>
int64_t med_scratch_bytes(const Tile<T>& tile) {
  const Chunks chunks = split_items(tile.rows, tile.cols);
  return 2 * tile.num_peers * tile.rows * chunks.count * static_cast<int64_t>(sizeof(T));
}

template <typename T>
void med_sweep(const Tile<T>& tile, const RowStats<T>& stats, T* med_sum, T* s_rest, T* s_amax,
               void* scratch, cudaStream_t stream) {
  TORCH_CHECK(tile.num_peers >= 2 && tile.num_peers <= kMaxPeers,
              "med_sweep needs 2 <= K <= ", kMaxPeers, " peers, got ", tile.num_peers);
  if (tile.rows == 0 || tile.cols == 0) return;
  const Chunks chunks = split_items(tile.rows, tile.cols);
  auto* partials = static_cast<T*>(scratch);

  if (tile.num_peers <= 2) {
    launch_partials<T, 2>(tile, stats, chunks, partials, s_amax, stream);
  } else if (tile.num_peers <= 4) {
    launch_partials<T, 4>(tile, stats, chunks, partials, s_amax, stream);
  } else if (tile.num_peers <= 8) {
    launch_partials<T, 8>(tile, stats, chunks, partials, s_amax, stream);
  } else {
    launch_partials<T, 16>(tile, stats, chunks, partials, s_amax, stream);
  }

  const int64_t pairs = tile.num_peers * tile.rows;
  const auto merge_blocks = static_cast<unsigned>(ceil_div(pairs, kThreads));
  med_merge_kernel<T>
      <<<merge_blocks, kThreads, 0, stream>>>(tile, chunks.count, partials, med_sum, s_rest);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template void med_sweep<float>(const Tile<float>&, const RowStats<float>&, float*, float*, float*,
                               void*, cudaStream_t);
template void med_sweep<double>(const Tile<double>&, const RowStats<double>&, double*, double*,
                                double*, void*, cudaStream_t);
template int64_t med_scratch_bytes<float>(const Tile<float>&);
template int64_t med_scratch_bytes<double>(const Tile<double>&);

}  // namespace hail_ext::cuda
