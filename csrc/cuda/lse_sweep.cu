// Sweep 1 on CUDA: the running log-sum-exp of every (peer, row) over one item tile.
//
// Work split: block (r, c, k) reduces chunk c of row r of peer k (grid rows x chunks x K,
// kThreads threads striding over the chunk's items so that a warp reads consecutive logits).
// Each thread folds its items into an LseAcc, the block merges them, and thread 0 writes one
// partial per chunk. A second, tiny kernel (one thread per (peer, row)) then merges the chunks in
// order into the running state, so the result does not depend on scheduling. The block holding
// the target item also records its logit.
#include <c10/cuda/CUDAException.h>

#include "device_utils.cuh"
#include "sweeps_cuda.h"

namespace hail_ext::cuda {
namespace {

template <typename T>
__global__ void lse_partial_kernel(Tile<T> tile, int64_t chunk_items, LseAcc<T>* partials,
                                   T* target_logit) {
  __shared__ LseAcc<T> smem[kThreads / kWarp];
  const int64_t r = blockIdx.x, chunk = blockIdx.y, k = blockIdx.z;
  const int64_t n = tile.row0 + r;
  if (!tile.active[n]) return;  // the whole block leaves together

  const int64_t begin = chunk * chunk_items;
  const int64_t end = begin + chunk_items < tile.cols ? begin + chunk_items : tile.cols;
  const T* z = tile.logits + (k * tile.rows + r) * tile.cols;

  LseAcc<T> acc = lse_empty<T>();
  for (int64_t v = begin + threadIdx.x; v < end; v += blockDim.x) {
    acc = lse_merge(acc, LseAcc<T>{z[v], T(0), tile.item0 + v});
  }
  acc = block_lse(acc, smem);

  if (threadIdx.x == 0) {
    partials[(k * tile.rows + r) * gridDim.y + chunk] = acc;
    const int64_t t_local = tile.target[n] - tile.item0;
    if (t_local >= begin && t_local < end) target_logit[k * tile.num_rows + n] = z[t_local];
  }
}

// One thread per (peer, row): the chunks of this tile, in order, into the running state.
template <typename T>
__global__ void lse_merge_kernel(Tile<T> tile, int64_t num_chunks, const LseAcc<T>* partials,
                                 LseState<T> state) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= tile.num_peers * tile.rows) return;
  const int64_t k = index / tile.rows, r = index % tile.rows;
  const int64_t n = tile.row0 + r;
  if (!tile.active[n]) return;

  const int64_t s = k * tile.num_rows + n;
  LseAcc<T> run{state.max[s], state.rest[s], state.amax[s] < 0 ? kNoItem : state.amax[s]};
  for (int64_t c = 0; c < num_chunks; ++c) run = lse_merge(run, partials[index * num_chunks + c]);
  state.max[s] = run.max;
  state.rest[s] = run.rest;
  state.amax[s] = run.amax == kNoItem ? -1 : run.amax;
}

}  // namespace

template <typename T>
int64_t lse_scratch_bytes(const Tile<T>& tile) {
  const Chunks chunks = split_items(tile.rows * tile.num_peers, tile.cols);
  return tile.num_peers * tile.rows * chunks.count * static_cast<int64_t>(sizeof(LseAcc<T>));
}

template <typename T>
void lse_sweep(const Tile<T>& tile, const LseState<T>& state, void* scratch, cudaStream_t stream) {
  if (tile.rows == 0 || tile.cols == 0) return;
  const Chunks chunks = split_items(tile.rows * tile.num_peers, tile.cols);
  auto* partials = static_cast<LseAcc<T>*>(scratch);

  const dim3 grid(static_cast<unsigned>(tile.rows), static_cast<unsigned>(chunks.count),
                  static_cast<unsigned>(tile.num_peers));
  lse_partial_kernel<T>
      <<<grid, kThreads, 0, stream>>>(tile, chunks.items, partials, state.target_logit);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const int64_t pairs = tile.num_peers * tile.rows;
  const auto merge_blocks = static_cast<unsigned>(ceil_div(pairs, kThreads));
  lse_merge_kernel<T><<<merge_blocks, kThreads, 0, stream>>>(tile, chunks.count, partials, state);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template void lse_sweep<float>(const Tile<float>&, const LseState<float>&, void*, cudaStream_t);
template void lse_sweep<double>(const Tile<double>&, const LseState<double>&, void*, cudaStream_t);
template int64_t lse_scratch_bytes<float>(const Tile<float>&);
template int64_t lse_scratch_bytes<double>(const Tile<double>&);

}  // namespace hail_ext::cuda
