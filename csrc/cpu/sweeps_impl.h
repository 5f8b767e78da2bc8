// Vectorised bodies of the sweeps declared in sweeps.h. Included once per instruction set by
// sweeps_<isa>.cpp with CPU_CAPABILITY set, so that at::vec::Vectorized<T> is the vector type of
// that set and every symbol lands in a namespace of its own.
//
// Work split: at::parallel_for over the rows of the block; one thread walks one row of the tile
// for all K peers at once (the peers' terms need every peer's probability of the same item).
// Items that need exact special handling (the target, each peer's arg-max item) are cut out of
// the vector loops and done in scalar code.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "sweeps.h"

namespace hail_ext::cpu {
inline namespace CPU_CAPABILITY {

using at::vec::Vectorized;

// Calls body(v, count) over [begin, end) in vector-width steps; count < width only at the end.
template <typename T, typename Body>
void for_each_vector(int64_t begin, int64_t end, Body&& body) {
  constexpr int64_t width = Vectorized<T>::size();
  int64_t v = begin;
  for (; v + width <= end; v += width) body(v, width);
  if (v < end) body(v, end - v);
}

// Sums over a catalogue run to 10^6 terms; lanes accumulate at most kChunk items before they
// are added into a double, which keeps float32 sums to a few ulp (a cascade, not one long chain).
constexpr int64_t kChunk = 1024;

template <typename T>
double hsum(const Vectorized<T>& x) {
  alignas(64) T lanes[Vectorized<T>::size()];
  x.store(lanes);
  double total = 0;
  for (int64_t i = 0; i < Vectorized<T>::size(); ++i) total += lanes[i];
  return total;
}

// Calls body(v, count) over [begin, end) like for_each_vector, and flush() after every kChunk
// items and at the end.
template <typename T, typename Body, typename Flush>
void for_each_chunk(int64_t begin, int64_t end, Body&& body, Flush&& flush) {
  for (int64_t c = begin; c < end; c += kChunk) {
    for_each_vector<T>(c, std::min(c + kChunk, end), body);
    flush();
  }
}

// exp of log-probabilities (arguments <= 0). SLEEF's 1-ulp exp: at::vec's 20-ulp polynomial
// (exp_u20) measured no faster here, and its error is systematic, not random.
template <typename T>
Vectorized<T> exp_neg(const Vectorized<T>& x) {
  return x.exp();
}

// Lanes past `count` hold padding; zero their contribution.
template <typename T>
Vectorized<T> keep_lanes(const Vectorized<T>& x, int64_t count) {
  return count == Vectorized<T>::size() ? x : Vectorized<T>::set(Vectorized<T>(T(0)), x, count);
}

// The local indices in [0, cols) of this row's target and of each peer's arg-max item, sorted
// and unique. The vector loops run over the gaps between them.
template <typename T>
void special_items(const Tile<T>& tile, const int64_t* amax, int64_t n, bool with_amax,
                   std::vector<int64_t>& out) {
  out.clear();
  auto add = [&](int64_t item) {
    const int64_t local = item - tile.item0;
    if (local >= 0 && local < tile.cols) out.push_back(local);
  };
  add(tile.target[n]);
  if (with_amax) {
    for (int64_t k = 0; k < tile.num_peers; ++k) add(amax[k * tile.num_rows + n]);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
}

template <typename T, typename Body>
void for_each_gap(const std::vector<int64_t>& specials, int64_t cols, Body&& body) {
  int64_t begin = 0;
  for (int64_t s : specials) {
    if (s > begin) body(begin, s);
    begin = s + 1;
  }
  if (cols > begin) body(begin, cols);
}

template <typename T>
T* row_of(const Tile<T>& tile, int64_t k, int64_t local_row) {
  return tile.logits + (k * tile.rows + local_row) * tile.cols;
}

template <typename T>
void load_norms(const Tile<T>& tile, const RowStats<T>& stats, int64_t n, std::vector<T>& max,
                std::vector<T>& norm) {
  for (int64_t k = 0; k < tile.num_peers; ++k) {
    max[k] = stats.max[k * tile.num_rows + n];
    norm[k] = stats.log_norm[k * tile.num_rows + n];
  }
}

// Every peer's p(v) into q and p(v)^gamma into qg, for the chunk of items [v, v + count).
template <typename T>
void probabilities(const Tile<T>& tile, int64_t r, int64_t v, int64_t count,
                   const std::vector<T>& max, const std::vector<T>& norm, T gamma, bool gamma_one,
                   std::vector<Vectorized<T>>& q, std::vector<Vectorized<T>>& qg) {
  using Vec = Vectorized<T>;
  for (int64_t j = 0; j < tile.num_peers; ++j) {
    const Vec log_p = (Vec::loadu(row_of(tile, j, r) + v, count) - Vec(max[j])) - Vec(norm[j]);
    q[j] = exp_neg(log_p);
    qg[j] = gamma_one ? q[j] : exp_neg(log_p * Vec(gamma));
  }
}

template <typename T>
Vectorized<T> mean_of_others(const std::vector<Vectorized<T>>& qg, int64_t k, T inv_others) {
  Vectorized<T> sum(T(0));
  for (int64_t j = 0; j < static_cast<int64_t>(qg.size()); ++j) {
    if (j != k) sum = sum + qg[j];
  }
  return sum * Vectorized<T>(inv_others);
}

// ---- sweep 1: running log-sum-exp --------------------------------------------------------

template <typename T>
void lse_tile(const Tile<T>& tile, const LseState<T>& state) {
  using Vec = Vectorized<T>;
  const T neg_inf = -std::numeric_limits<T>::infinity();

  at::parallel_for(0, tile.rows, 1, [&](int64_t row_begin, int64_t row_end) {
    for (int64_t r = row_begin; r < row_end; ++r) {
      const int64_t n = tile.row0 + r;
      if (!tile.active[n]) continue;
      const int64_t t_local = tile.target[n] - tile.item0;

      for (int64_t k = 0; k < tile.num_peers; ++k) {
        const T* z = row_of(tile, k, r);
        const int64_t s = k * tile.num_rows + n;

        Vec vmax(neg_inf);
        for_each_vector<T>(0, tile.cols, [&](int64_t v, int64_t count) {
          const Vec x = Vec::set(Vec(neg_inf), Vec::loadu(z + v, count), count);
          vmax = at::vec::maximum(vmax, x);  // propagates NaN
        });
        alignas(64) T lanes[Vec::size()];
        vmax.store(lanes);
        T tile_max = lanes[0];
        for (int64_t i = 1; i < Vec::size(); ++i) {
          tile_max = (std::isnan(lanes[i]) || lanes[i] > tile_max) ? lanes[i] : tile_max;
        }
        const int64_t local_amax = std::find(z, z + tile.cols, tile_max) - z;  // cols if NaN

        Vec vsum(T(0));
        double sum = 0;
        auto add_exp = [&](int64_t begin, int64_t end) {
          for_each_chunk<T>(
              begin, end,
              [&](int64_t v, int64_t count) {
                vsum = vsum + keep_lanes(exp_neg(Vec::loadu(z + v, count) - Vec(tile_max)), count);
              },
              [&] {
                sum += hsum(vsum);
                vsum = Vec(T(0));
              });
        };
        add_exp(0, std::min(local_amax, tile.cols));
        if (local_amax < tile.cols) add_exp(local_amax + 1, tile.cols);
        const T tile_rest = static_cast<T>(sum);

        // Merge (tile_max, tile_rest) into the running state; the smaller maximum joins rest.
        T& run_max = state.max[s];
        T& run_rest = state.rest[s];
        if (tile_max > run_max || std::isnan(tile_max)) {
          run_rest = (run_rest + T(1)) * std::exp(run_max - tile_max) + tile_rest;
          run_max = tile_max;
          state.amax[s] = tile.item0 + local_amax;
        } else {
          run_rest += (tile_rest + T(1)) * std::exp(tile_max - run_max);
        }
        if (t_local >= 0 && t_local < tile.cols) state.target_logit[s] = z[t_local];
      }
    }
  });
}

// ---- sweep 2: the peers' sums S and MED ----------------------------------------------------

template <typename T>
void med_tile(const Tile<T>& tile, const RowStats<T>& stats, T* med_sum, T* s_rest, T* s_amax) {
  using Vec = Vectorized<T>;
  const int64_t num_peers = tile.num_peers;
  const T inv_others = T(1) / T(num_peers - 1);
  const bool gamma_one = stats.gamma == T(1);

  at::parallel_for(0, tile.rows, 1, [&](int64_t row_begin, int64_t row_end) {
    std::vector<Vec> q(num_peers), qg(num_peers), med_acc(num_peers), s_acc(num_peers);
    std::vector<double> med_total(num_peers), s_total(num_peers);
    std::vector<T> us(num_peers), qgs(num_peers), max(num_peers), norm(num_peers);
    std::vector<int64_t> specials;

    for (int64_t r = row_begin; r < row_end; ++r) {
      const int64_t n = tile.row0 + r;
      if (!tile.active[n]) continue;
      load_norms(tile, stats, n, max, norm);

      // Off every arg-max item p <= 1/2, so w = 1 - p is exact to an ulp and no expm1 is needed;
      // log(1 - p) = log(w) + (1 - p - w) / w keeps the digits of small p that w drops.
      auto body = [&](int64_t v, int64_t count) {
        probabilities(tile, r, v, count, max, norm, stats.gamma, gamma_one, q, qg);
        for (int64_t k = 0; k < num_peers; ++k) {
          const Vec c = mean_of_others(qg, k, inv_others);
          const Vec p = q[k];
          const Vec w = Vec(T(1)) - p;
          const Vec inv_w = Vec(T(1)) / w;
          const Vec log1mp = w.log() + ((Vec(T(1)) - w) - p) * inv_w;
          med_acc[k] = med_acc[k] + keep_lanes(c * log1mp, count);
          s_acc[k] = s_acc[k] + keep_lanes(c * p * inv_w, count);
        }
      };
      special_items(tile, stats.amax, n, /*with_amax=*/true, specials);
      std::fill(med_total.begin(), med_total.end(), 0.0);
      std::fill(s_total.begin(), s_total.end(), 0.0);
      auto flush = [&] {
        for (int64_t k = 0; k < num_peers; ++k) {
          med_total[k] += hsum(med_acc[k]);
          s_total[k] += hsum(s_acc[k]);
          med_acc[k] = s_acc[k] = Vec(T(0));
        }
      };
      for_each_gap<T>(specials, tile.cols, [&](int64_t begin, int64_t end) {
        for_each_chunk<T>(begin, end, body, flush);
      });

      for (int64_t k = 0; k < num_peers; ++k) {
        const int64_t s = k * tile.num_rows + n;
        med_sum[s] += static_cast<T>(med_total[k]);
        s_rest[s] += static_cast<T>(s_total[k]);
      }

      // The arg-max items off the target, with their exact log(1 - p) and p / (1 - p).
      const int64_t t_local = tile.target[n] - tile.item0;
      for (int64_t v : specials) {
        if (v == t_local) continue;  // c(target) = 0
        for (int64_t j = 0; j < num_peers; ++j) {
          us[j] = (row_of(tile, j, r)[v] - max[j]) - norm[j];
          qgs[j] = std::exp(stats.gamma * us[j]);
        }
        for (int64_t k = 0; k < num_peers; ++k) {
          const int64_t s = k * tile.num_rows + n;
          T c = 0;
          for (int64_t j = 0; j < num_peers; ++j) c += (j != k) ? qgs[j] : T(0);
          c *= inv_others;
          if (!(c > T(0))) continue;  // keeps 0 * inf out
          const bool is_amax = stats.amax[s] == tile.item0 + v;
          const T log1mp = is_amax ? stats.log1mp_amax[s] : std::log(-std::expm1(us[k]));
          const T ratio = is_amax ? stats.ratio_amax[s] : std::exp(us[k]) / -std::expm1(us[k]);
          med_sum[s] += c * log1mp;
          (is_amax ? s_amax : s_rest)[s] += c * ratio;
        }
      }
    }
  });
}

// ---- sweep 3: dL/dz, in place --------------------------------------------------------------

// dL/dz of every peer at one special item v (the target or an arg-max item), into dz[k];
// us[j] = log p_j(v).
template <typename T>
void grad_special(const Tile<T>& tile, const RowStats<T>& stats, const T* coef_a, const T* coef_b,
                  const T* s_rest, const T* s_amax, int64_t n, int64_t v, T inv_others,
                  bool with_peers, const std::vector<T>& us, std::vector<T>& qgs,
                  std::vector<T>& dz) {
  const int64_t num_peers = tile.num_peers;
  const bool is_target = tile.item0 + v == tile.target[n];
  for (int64_t j = 0; j < num_peers; ++j) qgs[j] = std::exp(stats.gamma * us[j]);

  for (int64_t k = 0; k < num_peers; ++k) {
    const int64_t s = k * tile.num_rows + n;
    const bool is_amax = stats.amax[s] == tile.item0 + v;
    const T p = std::exp(us[k]);
    T d;
    if (is_target) {
      // c(target) = 0; p - 1 to full precision even when the target holds almost all the mass.
      const T p_minus_1 = is_amax ? -std::exp(stats.log1mp_amax[s]) : std::expm1(us[k]);
      d = coef_a[s] * p_minus_1;
      if (with_peers) d -= coef_b[s] * (s_rest[s] + s_amax[s]) * p;
    } else {
      d = coef_a[s] * p;
      if (with_peers) {
        T c = 0;
        for (int64_t j = 0; j < num_peers; ++j) c += (j != k) ? qgs[j] : T(0);
        c *= inv_others;
        if (is_amax) {
          d += coef_b[s] * p * (c - s_rest[s]);
        } else {
          const T ratio = p / -std::expm1(us[k]);
          d += coef_b[s] * (c * ratio - (s_rest[s] + s_amax[s]) * p);
        }
      }
    }
    dz[k] = d;
  }
}

template <typename T>
void grad_tile(const Tile<T>& tile, const RowStats<T>& stats, const T* coef_a, const T* coef_b,
               const T* s_rest, const T* s_amax) {
  using Vec = Vectorized<T>;
  const int64_t num_peers = tile.num_peers;
  const T inv_others = num_peers > 1 ? T(1) / T(num_peers - 1) : T(0);
  const bool gamma_one = stats.gamma == T(1);
  const bool with_peers = coef_b != nullptr && num_peers > 1;

  at::parallel_for(0, tile.rows, 1, [&](int64_t row_begin, int64_t row_end) {
    std::vector<Vec> q(num_peers), qg(num_peers);
    std::vector<T> us(num_peers), qgs(num_peers), ps(num_peers), max(num_peers), norm(num_peers);
    std::vector<int64_t> specials;

    for (int64_t r = row_begin; r < row_end; ++r) {
      const int64_t n = tile.row0 + r;
      if (!tile.active[n]) {
        for (int64_t k = 0; k < num_peers; ++k) std::fill_n(row_of(tile, k, r), tile.cols, T(0));
        continue;
      }
      load_norms(tile, stats, n, max, norm);

      // All peers' values of a chunk are read before any is overwritten.
      auto body = [&](int64_t v, int64_t count) {
        probabilities(tile, r, v, count, max, norm, stats.gamma, gamma_one || !with_peers, q, qg);
        for (int64_t k = 0; k < num_peers; ++k) {
          const int64_t s = k * tile.num_rows + n;
          const Vec p = q[k];
          Vec dz = Vec(coef_a[s]) * p;
          if (with_peers) {
            const Vec c = mean_of_others(qg, k, inv_others);
            const Vec ratio = p / (Vec(T(1)) - p);  // p <= 1/2 off the arg-max items
            dz = dz + Vec(coef_b[s]) * (c * ratio - Vec(s_rest[s] + s_amax[s]) * p);
          }
          dz.store(row_of(tile, k, r) + v, count);
        }
      };
      special_items(tile, stats.amax, n, with_peers, specials);
      // Read the special items before the vector loops overwrite their neighbours' chunks.
      for (size_t i = 0; i < specials.size(); ++i) {
        for (int64_t j = 0; j < num_peers; ++j) {
          us[j] = (row_of(tile, j, r)[specials[i]] - max[j]) - norm[j];
        }
        grad_special(tile, stats, coef_a, coef_b, s_rest, s_amax, n, specials[i], inv_others,
                     with_peers, us, qgs, ps);  // ps receives dz
        for (int64_t k = 0; k < num_peers; ++k) row_of(tile, k, r)[specials[i]] = ps[k];
      }
      // The vector loops never touch the special items, so their dz, written above, stays.
      for_each_gap<T>(specials, tile.cols,
                      [&](int64_t begin, int64_t end) { for_each_vector<T>(begin, end, body); });
    }
  });
}

// One table per instruction set; HAIL_SWEEP_TABLE names its accessor.
#define HAIL_DEFINE_SWEEP_TABLE(accessor, isa_name)                                            \
  const SweepTable& accessor##_ref() {                                                         \
    static const SweepTable table{isa_name,                                                    \
                                  {&lse_tile<float>, &med_tile<float>, &grad_tile<float>},     \
                                  {&lse_tile<double>, &med_tile<double>, &grad_tile<double>}}; \
    return table;                                                                              \
  }

}  // namespace CPU_CAPABILITY
}  // namespace hail_ext::cpu
