// Per-(peer, row) state that the sweeps of every device pass between them. Arrays named [K, N]
// are indexed `k * num_rows + n` with global row index n.
#pragma once

#include <cstdint>

namespace hail_ext {

// Running log-sum-exp of every (peer, row), kept as the largest logit `max` at item `amax`
// (lowest index among ties, -1 before any item) plus `rest` = sum over the other items of
// exp(z - max). Keeping the arg-max item apart gives log(1 - p) of the most likely item to full
// precision.
template <typename T>
struct LseState {
  T* max;           // [K, N], start at -inf
  T* rest;          // [K, N], start at 0
  int64_t* amax;    // [K, N], start at -1
  T* target_logit;  // [K, N]
};

// Per-(peer, row) results of the first sweep that the later sweeps read. The log-sum-exp is kept
// as max + log_norm: log p(v) = (z(v) - max) - log_norm loses nothing for items near the max.
template <typename T>
struct RowStats {
  const T* max;          // [K, N]
  const T* log_norm;     // [K, N]: log1p(rest)
  const int64_t* amax;   // [K, N]
  const T* log1mp_amax;  // [K, N]: log(1 - p(amax)) = log(rest) - log1p(rest)
  const T* ratio_amax;   // [K, N]: p(amax) / (1 - p(amax)) = 1 / rest
  T gamma;
};

}  // namespace hail_ext
