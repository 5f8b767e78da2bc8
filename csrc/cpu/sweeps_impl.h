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
#include <utility>
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
Vectorized<T> mean_of_others(const std::vector<Vectorized<T>>& qg, int64_t k, T inv_others) {
  Vectorized<T> sum(T(0));
  for (int64_t j = 0; j < static_cast<int64_t>(qg.size()); ++j) {
    if (j != k) sum = sum + qg[j];
  }
  return sum * Vectorized<T>(inv_others);
}

// ---- the sweeps of one row ----------------------------------------------------------------

// Per-thread scratch and the three sweeps over one row r of a tile, for all peers at once.
template <typename T>
class RowSweeper {
  using Vec = Vectorized<T>;

 public:
  // With keep_exp, lse() leaves exp(z - max) in place of each logit (1 at the arg-max item) and
  // the later sweeps scale it by exp(-log_norm) instead of calling exp again. Only for a single
  // visit of the row (rows_tile) with gamma = 1, where nothing else reads the logits.
  RowSweeper(const Tile<T>& tile, T gamma, bool keep_exp = false)
      : tile_(tile),
        keep_exp_(keep_exp),
        num_peers_(tile.num_peers),
        inv_others_(tile.num_peers > 1 ? T(1) / T(tile.num_peers - 1) : T(0)),
        gamma_(gamma),
        gamma_one_(gamma == T(1)),
        q_(num_peers_),
        qg_(num_peers_),
        med_acc_(num_peers_),
        s_acc_(num_peers_),
        med_total_(num_peers_),
        s_total_(num_peers_),
        us_(num_peers_),
        qgs_(num_peers_),
        ps_(num_peers_),
        max_(num_peers_),
        norm_(num_peers_),
        scale_(num_peers_) {}

  // Sweep 1: fold the row into the running (max, amax, rest) and pick up the target logit.
  void lse(int64_t r, const LseState<T>& state) {
    const int64_t n = tile_.row0 + r;
    const int64_t t_local = tile_.target[n] - tile_.item0;
    for (int64_t k = 0; k < num_peers_; ++k) {
      T* z = row_of(tile_, k, r);
      const int64_t s = k * tile_.num_rows + n;
      if (t_local >= 0 && t_local < tile_.cols) state.target_logit[s] = z[t_local];
      const auto [tile_max, local_amax] = max_and_argmax(z);
      const T tile_rest = sum_exp_except(z, tile_max, local_amax);

      // Merge (tile_max, tile_rest) into the running state; the smaller maximum joins rest.
      T& run_max = state.max[s];
      T& run_rest = state.rest[s];
      if (tile_max > run_max || std::isnan(tile_max)) {
        run_rest = (run_rest + T(1)) * std::exp(run_max - tile_max) + tile_rest;
        run_max = tile_max;
        state.amax[s] = tile_.item0 + local_amax;
      } else {
        run_rest += (tile_rest + T(1)) * std::exp(tile_max - run_max);
      }
    }
  }

  // Sweep 2: the peers' sums over the row's items off the target (needs K >= 2).
  void med(int64_t r, const RowStats<T>& stats, T* med_sum, T* s_rest, T* s_amax) {
    const int64_t n = tile_.row0 + r;
    load_norms(stats, n);

    // Off every arg-max item p <= 1/2, so w = 1 - p is exact to an ulp and no expm1 is needed;
    // log(1 - p) = log(w) + (1 - p - w) / w keeps the digits of small p that w drops.
    auto body = [&](int64_t v, int64_t count) {
      probabilities(r, v, count, gamma_one_);
      for (int64_t k = 0; k < num_peers_; ++k) {
        const Vec c = mean_of_others(qg_, k, inv_others_);
        const Vec p = q_[k];
        const Vec w = Vec(T(1)) - p;
        const Vec inv_w = Vec(T(1)) / w;
        const Vec log1mp = w.log() + ((Vec(T(1)) - w) - p) * inv_w;
        med_acc_[k] = med_acc_[k] + keep_lanes(c * log1mp, count);
        s_acc_[k] = s_acc_[k] + keep_lanes(c * p * inv_w, count);
      }
    };
    auto flush = [&] {
      for (int64_t k = 0; k < num_peers_; ++k) {
        med_total_[k] += hsum(med_acc_[k]);
        s_total_[k] += hsum(s_acc_[k]);
        med_acc_[k] = s_acc_[k] = Vec(T(0));
      }
    };
    special_items(tile_, stats.amax, n, /*with_amax=*/true, specials_);
    std::fill(med_acc_.begin(), med_acc_.end(), Vec(T(0)));
    std::fill(s_acc_.begin(), s_acc_.end(), Vec(T(0)));
    std::fill(med_total_.begin(), med_total_.end(), 0.0);
    std::fill(s_total_.begin(), s_total_.end(), 0.0);
    for_each_gap<T>(specials_, tile_.cols, [&](int64_t begin, int64_t end) {
      for_each_chunk<T>(begin, end, body, flush);
    });
    for (int64_t k = 0; k < num_peers_; ++k) {
      const int64_t s = k * tile_.num_rows + n;
      med_sum[s] += static_cast<T>(med_total_[k]);
      s_rest[s] += static_cast<T>(s_total_[k]);
    }

    // The arg-max items off the target, with their exact log(1 - p) and p / (1 - p).
    const int64_t t_local = tile_.target[n] - tile_.item0;
    for (int64_t v : specials_) {
      if (v == t_local) continue;  // c(target) = 0
      special_log_probs(r, v);
      for (int64_t k = 0; k < num_peers_; ++k) {
        const int64_t s = k * tile_.num_rows + n;
        const T c = scalar_mean_of_others(k);
        if (!(c > T(0))) continue;  // keeps 0 * inf out
        const bool is_amax = stats.amax[s] == tile_.item0 + v;
        const T log1mp = is_amax ? stats.log1mp_amax[s] : std::log(-std::expm1(us_[k]));
        const T ratio = is_amax ? stats.ratio_amax[s] : std::exp(us_[k]) / -std::expm1(us_[k]);
        med_sum[s] += c * log1mp;
        (is_amax ? s_amax : s_rest)[s] += c * ratio;
      }
    }
  }

  // Sweep 3: overwrite the row with dL/dz (see SweepKernels::grad).
  void grad(int64_t r, const RowStats<T>& stats, const T* coef_a, const T* coef_b, const T* s_rest,
            const T* s_amax) {
    const int64_t n = tile_.row0 + r;
    const bool with_peers = coef_b != nullptr && num_peers_ > 1;
    load_norms(stats, n);

    // All peers' values of a chunk are read before any is overwritten.
    auto body = [&](int64_t v, int64_t count) {
      probabilities(r, v, count, gamma_one_ || !with_peers);
      for (int64_t k = 0; k < num_peers_; ++k) {
        const int64_t s = k * tile_.num_rows + n;
        const Vec p = q_[k];
        Vec dz = Vec(coef_a[s]) * p;
        if (with_peers) {
          const Vec c = mean_of_others(qg_, k, inv_others_);
          const Vec ratio = p / (Vec(T(1)) - p);  // p <= 1/2 off the arg-max items
          dz = dz + Vec(coef_b[s]) * (c * ratio - Vec(s_rest[s] + s_amax[s]) * p);
        }
        dz.store(row_of(tile_, k, r) + v, count);
      }
    };
    special_items(tile_, stats.amax, n, with_peers, specials_);
    // The special items first: the vector loops never touch them, so their dz stays.
    for (int64_t v : specials_) {
      special_log_probs(r, v);
      grad_special(stats, coef_a, coef_b, s_rest, s_amax, n, v, with_peers);
      for (int64_t k = 0; k < num_peers_; ++k) row_of(tile_, k, r)[v] = ps_[k];
    }
    for_each_gap<T>(specials_, tile_.cols,
                    [&](int64_t begin, int64_t end) { for_each_vector<T>(begin, end, body); });
  }

  void zero(int64_t r) {
    for (int64_t k = 0; k < num_peers_; ++k) std::fill_n(row_of(tile_, k, r), tile_.cols, T(0));
  }

 private:
  std::pair<T, int64_t> max_and_argmax(const T* z) const {
    const T neg_inf = -std::numeric_limits<T>::infinity();
    Vec vmax(neg_inf);
    for_each_vector<T>(0, tile_.cols, [&](int64_t v, int64_t count) {
      const Vec x = Vec::set(Vec(neg_inf), Vec::loadu(z + v, count), count);
      vmax = at::vec::maximum(vmax, x);  // propagates NaN
    });
    alignas(64) T lanes[Vec::size()];
    vmax.store(lanes);
    T tile_max = lanes[0];
    for (int64_t i = 1; i < Vec::size(); ++i) {
      tile_max = (std::isnan(lanes[i]) || lanes[i] > tile_max) ? lanes[i] : tile_max;
    }
    return {tile_max, std::find(z, z + tile_.cols, tile_max) - z};  // cols if NaN
  }

  // sum of exp(z - max) over the row, the arg-max item left out (and, with keep_exp, each
  // exp(z - max) written over its logit).
  T sum_exp_except(T* z, T tile_max, int64_t local_amax) const {
    Vec vsum(T(0));
    double sum = 0;
    auto add_exp = [&](int64_t begin, int64_t end) {
      for_each_chunk<T>(
          begin, end,
          [&](int64_t v, int64_t count) {
            const Vec e = exp_neg(Vec::loadu(z + v, count) - Vec(tile_max));
            if (keep_exp_) e.store(z + v, count);
            vsum = vsum + keep_lanes(e, count);
          },
          [&] {
            sum += hsum(vsum);
            vsum = Vec(T(0));
          });
    };
    add_exp(0, std::min(local_amax, tile_.cols));
    if (local_amax < tile_.cols) add_exp(local_amax + 1, tile_.cols);
    if (keep_exp_ && local_amax < tile_.cols) z[local_amax] = T(1);
    return static_cast<T>(sum);
  }

  void load_norms(const RowStats<T>& stats, int64_t n) {
    for (int64_t k = 0; k < num_peers_; ++k) {
      max_[k] = stats.max[k * tile_.num_rows + n];
      norm_[k] = stats.log_norm[k * tile_.num_rows + n];
      if (keep_exp_) scale_[k] = std::exp(-norm_[k]);
    }
  }

  // Every peer's p(v) into q_ and p(v)^gamma into qg_, for the items [v, v + count).
  void probabilities(int64_t r, int64_t v, int64_t count, bool gamma_one) {
    for (int64_t j = 0; j < num_peers_; ++j) {
      if (keep_exp_) {  // gamma = 1 here
        q_[j] = qg_[j] = Vec::loadu(row_of(tile_, j, r) + v, count) * Vec(scale_[j]);
        continue;
      }
      const Vec log_p = (Vec::loadu(row_of(tile_, j, r) + v, count) - Vec(max_[j])) - Vec(norm_[j]);
      q_[j] = exp_neg(log_p);
      qg_[j] = gamma_one ? q_[j] : exp_neg(log_p * Vec(gamma_));
    }
  }

  // log p_j(v) into us_ and p_j(v)^gamma into qgs_, for one item.
  void special_log_probs(int64_t r, int64_t v) {
    for (int64_t j = 0; j < num_peers_; ++j) {
      const T x = row_of(tile_, j, r)[v];
      us_[j] = (keep_exp_ ? std::log(x) : x - max_[j]) - norm_[j];
      qgs_[j] = std::exp(gamma_ * us_[j]);
    }
  }

  T scalar_mean_of_others(int64_t k) const {
    T c = 0;
    for (int64_t j = 0; j < num_peers_; ++j) c += (j != k) ? qgs_[j] : T(0);
    return c * inv_others_;
  }

  // dL/dz of every peer at one special item v (the target or an arg-max item), into ps_.
  void grad_special(const RowStats<T>& stats, const T* coef_a, const T* coef_b, const T* s_rest,
                    const T* s_amax, int64_t n, int64_t v, bool with_peers) {
    const bool is_target = tile_.item0 + v == tile_.target[n];
    for (int64_t k = 0; k < num_peers_; ++k) {
      const int64_t s = k * tile_.num_rows + n;
      const bool is_amax = stats.amax[s] == tile_.item0 + v;
      const T p = std::exp(us_[k]);
      T d;
      if (is_target) {
        // c(target) = 0; p - 1 to full precision even when the target holds almost all the mass.
        const T p_minus_1 = is_amax ? -std::exp(stats.log1mp_amax[s]) : std::expm1(us_[k]);
        d = coef_a[s] * p_minus_1;
        if (with_peers) d -= coef_b[s] * (s_rest[s] + s_amax[s]) * p;
      } else {
        d = coef_a[s] * p;
        if (with_peers) {
          const T c = scalar_mean_of_others(k);
          if (is_amax) {
            d += coef_b[s] * p * (c - s_rest[s]);
          } else {
            const T ratio = p / -std::expm1(us_[k]);
            d += coef_b[s] * (c * ratio - (s_rest[s] + s_amax[s]) * p);
          }
        }
      }
      ps_[k] = d;
    }
  }

  const Tile<T>& tile_;
  const bool keep_exp_;
  const int64_t num_peers_;
  const T inv_others_, gamma_;
  const bool gamma_one_;
  std::vector<Vec> q_, qg_, med_acc_, s_acc_;
  std::vector<double> med_total_, s_total_;
  std::vector<T> us_, qgs_, ps_, max_, norm_, scale_;
  std::vector<int64_t> specials_;
};

// ---- the sweeps over a tile: one row per task --------------------------------------------

template <typename T, typename Fn>
void for_each_row(const Tile<T>& tile, T gamma, Fn&& fn, bool keep_exp = false) {
  at::parallel_for(0, tile.rows, 1, [&](int64_t row_begin, int64_t row_end) {
    RowSweeper<T> sweeper(tile, gamma, keep_exp);
    for (int64_t r = row_begin; r < row_end; ++r) fn(sweeper, r, tile.active[tile.row0 + r]);
  });
}

template <typename T>
void lse_tile(const Tile<T>& tile, const LseState<T>& state) {
  for_each_row(tile, T(1), [&](RowSweeper<T>& sweeper, int64_t r, bool active) {
    if (active) sweeper.lse(r, state);
  });
}

template <typename T>
void med_tile(const Tile<T>& tile, const RowStats<T>& stats, T* med_sum, T* s_rest, T* s_amax) {
  for_each_row(tile, stats.gamma, [&](RowSweeper<T>& sweeper, int64_t r, bool active) {
    if (active) sweeper.med(r, stats, med_sum, s_rest, s_amax);
  });
}

template <typename T>
void grad_tile(const Tile<T>& tile, const RowStats<T>& stats, const T* coef_a, const T* coef_b,
               const T* s_rest, const T* s_amax) {
  for_each_row(tile, stats.gamma, [&](RowSweeper<T>& sweeper, int64_t r, bool active) {
    active ? sweeper.grad(r, stats, coef_a, coef_b, s_rest, s_amax) : sweeper.zero(r);
  });
}

// ---- all three sweeps of a row in one visit ----------------------------------------------

// The log-sum-exp state of row n turned into the RowStats (as finish_lse in med_rows.cpp), and,
// when gradients are wanted, the row's coefficients (as row_terms and grad_coefs there).
template <typename T>
void finish_row(const RowPass<T>& pass, int64_t num_peers, int64_t num_rows, int64_t n) {
  const T gamma = pass.stats.gamma;
  std::vector<T> ce(num_peers), log1mq_target(num_peers);  // log(1 - q_k(target))
  for (int64_t k = 0; k < num_peers; ++k) {
    const int64_t s = k * num_rows + n;
    const T rest = pass.state.rest[s];
    pass.log_norm[s] = std::log1p(rest);
    pass.log1mp_amax[s] = std::log(rest) - pass.log_norm[s];
    pass.ratio_amax[s] = T(1) / rest;
    ce[k] = (pass.state.max[s] - pass.state.target_logit[s]) + pass.log_norm[s];
    log1mq_target[k] =
        pass.state.amax[s] == pass.target[n] ? pass.log1mp_amax[s] : std::log(-std::expm1(-ce[k]));
  }
  if (pass.coef_a == nullptr) return;

  const T scale = pass.unit_grad * pass.row_weight[n];
  for (int64_t k = 0; k < num_peers; ++k) {
    const int64_t s = k * num_rows + n;
    if (num_peers == 1) {
      pass.coef_a[s] = std::isnan(ce[k]) ? ce[k] : scale;  // a NaN row gets NaN gradients
      continue;
    }
    T a = 0;
    for (int64_t j = 0; j < num_peers; ++j) {
      if (j != k) a += std::exp(gamma * log1mq_target[j]);
    }
    a /= T(num_peers - 1);
    pass.coef_a[s] = scale * (pass.alpha + (T(1) - pass.alpha) * a);
    if (pass.coef_b != nullptr) pass.coef_b[s] = scale * (T(1) - pass.alpha);
  }
}

template <typename T>
void rows_tile(const Tile<T>& tile, const RowPass<T>& pass) {
  const T gamma = pass.stats.gamma;
  for_each_row(
      tile, gamma,
      [&](RowSweeper<T>& sweeper, int64_t r, bool active) {
        if (!active) {
          if (pass.coef_a != nullptr) sweeper.zero(r);
          return;
        }
        const int64_t n = tile.row0 + r;
        sweeper.lse(r, pass.state);
        finish_row(pass, tile.num_peers, tile.num_rows, n);
        if (tile.num_peers > 1) sweeper.med(r, pass.stats, pass.med_sum, pass.s_rest, pass.s_amax);
        if (pass.coef_a != nullptr) {
          sweeper.grad(r, pass.stats, pass.coef_a, pass.coef_b, pass.s_rest, pass.s_amax);
        }
      },
      /*keep_exp=*/gamma == T(1));
}

// One table per instruction set; HAIL_SWEEP_TABLE names its accessor.
#define HAIL_DEFINE_SWEEP_TABLE(accessor, isa_name)                                      \
  const SweepTable& accessor##_ref() {                                                   \
    static const SweepTable table{                                                       \
        isa_name,                                                                        \
        {&lse_tile<float>, &med_tile<float>, &grad_tile<float>, &rows_tile<float>},      \
        {&lse_tile<double>, &med_tile<double>, &grad_tile<double>, &rows_tile<double>}}; \
    return table;                                                                        \
  }

}  // namespace CPU_CAPABILITY
}  // namespace hail_ext::cpu
