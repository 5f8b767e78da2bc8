// The element-wise sweeps of the HAIL loss on CUDA, over one (row block x item tile) of logits.
//
// The logits of all K peers for rows [row0, row0 + rows) and items [item0, item0 + cols) sit in
// one device buffer laid out [K, rows, cols] (computed by cuBLAS, see med_loss_cuda.cpp). The
// per-(peer, row) state lives in [K, N] device arrays indexed `k * num_rows + n` with the global
// row n, as in csrc/cpu/sweeps.h. Every launcher enqueues on the current CUDA stream and checks
// its launches; none synchronises with the host.
#pragma once

#include <c10/cuda/CUDAStream.h>

#include <cstdint>

#include "../sweep_state.h"

namespace hail_ext::cuda {

// Peer counts the sweeps are compiled for (per-thread arrays are sized at compile time).
constexpr int64_t kMaxPeers = 16;

template <typename T>
struct Tile {
  const T* logits;        // [K, rows, cols], contiguous, on the device
  int64_t num_peers;      // K
  int64_t rows, cols;     // extent of this block and tile
  int64_t row0, item0;    // global index of the first row and the first item
  int64_t num_rows;       // N, the stride of the [K, N] state arrays
  const int64_t* target;  // [N]
  const bool* active;     // [N]: rows that carry loss; the others are skipped (grad zeroed)
};

// Sweep 1: fold the tile into the running (max, amax, rest) of the active rows and pick up the
// target logit. `scratch` holds at least lse_scratch_bytes(tile) bytes of device memory.
template <typename T>
void lse_sweep(const Tile<T>& tile, const LseState<T>& state, void* scratch, cudaStream_t stream);
template <typename T>
int64_t lse_scratch_bytes(const Tile<T>& tile);

// Sweep 2 (K >= 2): add sum over the tile's items v != target of c(v) log(1 - p(v)) to
// `med_sum`, and S = sum of c(v) p(v) / (1 - p(v)) split in two: the arg-max item's term to
// `s_amax`, the others' to `s_rest` (all [K, N]). `scratch` holds at least med_scratch_bytes(tile)
// bytes.
template <typename T>
void med_sweep(const Tile<T>& tile, const RowStats<T>& stats, T* med_sum, T* s_rest, T* s_amax,
               void* scratch, cudaStream_t stream);
template <typename T>
int64_t med_scratch_bytes(const Tile<T>& tile);

// Sweep 3: dL/dz = coef_a (p - onehot) + coef_b (c p / (1 - p) - S p) into `dz` ([K, rows, cols],
// of type Out: the accumulation type, or the half type the gradient products read), with
// S = s_rest + s_amax; inactive rows get 0. `dz` may alias tile.logits. coef_b null (K = 1 or
// alpha = 1) skips the peers' term. At the arg-max item the peers' term is p (c - s_rest), as on
// the CPU: when that item holds almost all the mass, c p / (1 - p) and S would cancel. A non-null
// `dz_scale` (a device scalar) multiplies dz before it is rounded to Out, to keep float16's range.
template <typename T, typename Out>
void grad_sweep(const Tile<T>& tile, const RowStats<T>& stats, const T* coef_a, const T* coef_b,
                const T* s_rest, const T* s_amax, const T* dz_scale, Out* dz, cudaStream_t stream);

// Row weights and validity of every row, checked on the device: weight[n] = row_weight[n] (1 when
// absent) or 0 for ignored rows, valid[n] = weight[n] > 0. `facts` ([3] int64, device) receives
// the first row whose target is out of range, the first row whose weight is negative or not
// finite (INT64_MAX when none) and the number of valid rows.
template <typename T>
void read_rows(const int64_t* target, const T* row_weight, int64_t num_rows, int64_t num_items,
               int64_t ignore_index, T* weight, bool* valid, int64_t* facts, cudaStream_t stream);

}  // namespace hail_ext::cuda
