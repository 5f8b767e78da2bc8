// The element-wise sweeps of the HAIL loss over one (row block x item tile) of logits.
//
// The caller computes the logits of all K peers for rows [row0, row0 + rows) and items
// [item0, item0 + cols) into one buffer laid out [K, rows, cols]; the sweeps below read it
// (and the gradient sweep overwrites it with dL/dz). Per-(peer, row) state lives in [K, N]
// arrays indexed `k * num_rows + n` with global row index n. Each sweep is compiled once per
// instruction set (sweeps_*.cpp) and picked at run time (isa.cpp).
#pragma once

#include <cstdint>

#include "../sweep_state.h"

namespace hail_ext::cpu {

template <typename T>
struct Tile {
  T* logits;              // [K, rows, cols], contiguous
  int64_t num_peers;      // K
  int64_t rows, cols;     // extent of this block and tile
  int64_t row0, item0;    // global index of the first row and the first item
  int64_t num_rows;       // N, the stride of the [K, N] state arrays
  const int64_t* target;  // [N]
  const bool* active;     // [N]: rows that carry loss; the others are skipped (grad zeroed)
};

// Everything the three sweeps of a row need when they run back to back on one visit of the row
// (a single tile holding the whole catalogue, no truncation): the lse state, the RowStats it
// becomes (written here: log_norm, log1mp_amax, ratio_amax), the peers' sums, and, unless
// coef_a is null, the gradient coefficients (written here) for a unit upstream gradient.
template <typename T>
struct RowPass {
  LseState<T> state;
  RowStats<T> stats;  // reads what the pointers below write
  T* log_norm;
  T* log1mp_amax;
  T* ratio_amax;
  T* med_sum;
  T* s_rest;
  T* s_amax;
  const int64_t* target;  // [N]
  const T* row_weight;    // [N], 0 for ignored rows
  T unit_grad;            // upstream gradient of every row: 1 (sum) or 1 / total weight (mean)
  T alpha;
  T* coef_a;  // [K, N] or null: no gradient
  T* coef_b;  // [K, N] or null: K = 1 or alpha = 1
};

template <typename T>
struct SweepKernels {
  // Fold one tile into the running (max, amax, rest) and pick up the target logit.
  void (*lse)(const Tile<T>&, const LseState<T>&);
  // Accumulate, over the tile's items v != target, sum c(v) log(1 - p(v)) into `med_sum` and
  // S = sum c(v) p(v) / (1 - p(v)) split in two (all [K, N]): the arg-max item's term into
  // `s_amax`, the others into `s_rest`. Needs K >= 2.
  void (*med)(const Tile<T>&, const RowStats<T>&, T* med_sum, T* s_rest, T* s_amax);
  // Overwrite the tile with dL/dz = coef_a (p - onehot) + coef_b (c p / (1 - p) - S p),
  // coef_a, coef_b and S = s_rest + s_amax given per (peer, row); inactive rows get 0. coef_b may
  // be null (K = 1 or alpha = 1), which skips the peers' term. At the arg-max item the peers'
  // term is written p (c - s_rest): when that item holds almost all the mass, S and c p / (1 - p)
  // are both huge and their difference would cancel.
  void (*grad)(const Tile<T>&, const RowStats<T>&, const T* coef_a, const T* coef_b,
               const T* s_rest, const T* s_amax);
  // The three sweeps row by row while the row's logits are in cache: one read of the workspace
  // from memory instead of four. Only for a tile that spans the whole catalogue.
  void (*rows)(const Tile<T>&, const RowPass<T>&);
};

struct SweepTable {
  const char* isa;
  SweepKernels<float> f32;
  SweepKernels<double> f64;
};

const SweepTable& sweep_table_default();
const SweepTable* sweep_table_avx2();    // nullptr when not compiled
const SweepTable* sweep_table_avx512();  // nullptr when not compiled

// The table for this CPU: the widest compiled instruction set it supports, unless the
// environment variable HAIL_CPU_ISA (default, avx2, avx512) asks for a narrower one.
const SweepTable& sweep_table();

template <typename T>
const SweepKernels<T>& sweep_kernels();

}  // namespace hail_ext::cpu
