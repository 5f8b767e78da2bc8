// The HAIL loss on the CPU: the sweeps of docs/SPEC.md over row blocks and item tiles.
//
// For each block of rows the logits of all K peers are computed one item tile at a time by a
// BLAS product into a [K, rows, items] workspace, and the sweeps of sweeps.h read them. When a
// whole catalogue fits the workspace (one tile) the three sweeps share one product; otherwise each
// sweep recomputes its tiles. Only [K, N] statistics outlive a block. With beta > 0 the truncation
// needs every row's cross-entropy first, so a separate log-sum-exp pass over all blocks runs first.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <type_traits>
#include <vector>

#include "../med_loss.h"
#include "../plan.h"
#include "bf16_products.h"
#include "sweeps.h"

namespace hail_ext::cpu {
namespace {

// Whole-catalogue blocks of 128 to 1024 rows, else blocks of 1024 rows over tiles of items.
// Fewer rows than 128 per block re-read the item table from memory too often: measured at K=1,
// V=1e5, 83-row blocks took 3.8 s against 3.4 s for 2048-item tiles of 1024 rows (which compute
// the logits twice). Larger tiles measured no faster, so tiles stay at 8 MB; whole-catalogue
// blocks may take 32 MB, which keeps them in the last-level cache (benchmarks/NOTES.md, v6).
constexpr PlanLimits kCpuPlan{/*workspace_mb=*/32,       /*tiled_workspace_mb=*/8,
                              /*min_block_rows=*/128,    /*max_block_rows=*/1024,
                              /*tiled_block_rows=*/1024, /*tile_align=*/64};
constexpr int64_t kGradSlice = 8192;

template <typename T>
class MedCpu {
 public:
  explicit MedCpu(const MedArgs& args) : args_(args), kernels_(sweep_kernels<T>()) {
    // bfloat16 inputs go to the products as they are where the CPU has bfloat16 micro-kernels;
    // otherwise every product runs in T on converted copies.
    if constexpr (std::is_same_v<T, float>) {
      if (args.hidden.scalar_type() == at::kBFloat16 && Bf16Products::usable(args.hidden.size(2))) {
        bf16_ = std::make_unique<Bf16Products>(args.hidden, args.item_weight);
      }
    }
    if (!bf16_) {
      hidden_ = args.hidden.to(kAcc).contiguous();
      weight_ = args.item_weight.to(kAcc).contiguous();
    }
    if (args.bias.has_value()) bias_ = args.bias->to(kAcc).contiguous();
    num_peers_ = args.hidden.size(0);
    num_rows_ = args.hidden.size(1);
    num_items_ = args.item_weight.size(-2);
    plan_ = make_plan(kCpuPlan, num_peers_, num_rows_, num_items_, sizeof(T));
    workspace_ = at::empty({num_peers_ * plan_.block_rows * plan_.tile_items}, opts());
    if (!bf16_) hidden_scratch_ = at::empty({plan_.block_rows, args.hidden.size(2)}, opts());

    target_ = args.target.contiguous();
    row_weight_ = at::zeros({num_rows_}, opts());
    valid_ = at::zeros({num_rows_}, at::kBool);
    read_rows();
  }

  int64_t peers() const { return num_peers_; }
  int64_t rows() const { return num_rows_; }
  at::Tensor new_state(T fill) const { return at::full({num_peers_, num_rows_}, fill, opts()); }
  const at::Tensor& valid_rows() const { return valid_; }
  const at::Tensor& row_weights() const { return row_weight_; }
  const at::Tensor& targets() const { return target_; }
  const bool* valid() const { return valid_.data_ptr<bool>(); }
  const int64_t* target() const { return target_.data_ptr<int64_t>(); }

  template <typename Fn>
  void for_each_block(Fn&& fn) {
    for (int64_t n0 = 0; n0 < num_rows_; n0 += plan_.block_rows) {
      fn(n0, std::min(plan_.block_rows, num_rows_ - n0));
    }
  }

  // Sweep 1 over one block: fills max/rest/amax/target_logit of its valid rows.
  void lse_pass(int64_t n0, int64_t nb, const LseState<T>& state) {
    for_each_tile(n0, nb, [&](const Tile<T>& tile) { kernels_.lse(tile, state); }, valid());
  }

  // Sweep 2 over one block, for the rows flagged in `active`.
  void med_pass(int64_t n0, int64_t nb, const RowStats<T>& stats, const bool* active, T* med_sum,
                T* s_rest, T* s_amax) {
    for_each_tile(
        n0, nb, [&](const Tile<T>& tile) { kernels_.med(tile, stats, med_sum, s_rest, s_amax); },
        active);
  }

  // Sweep 3 over one block, and the two gradient products of each tile.
  void grad_pass(int64_t n0, int64_t nb, const RowStats<T>& stats, const bool* active,
                 const T* coef_a, const T* coef_b, const T* s_rest, const T* s_amax,
                 MedGrads& grads) {
    for_each_tile(
        n0, nb,
        [&](const Tile<T>& tile) {
          kernels_.grad(tile, stats, coef_a, coef_b, s_rest, s_amax);
          grad_products(n0, nb, tile, grads);
        },
        active);
    cached_ = {-1, -1};  // the workspace now holds dz
  }

  bool single_tile() const { return plan_.tile_items == num_items_; }

  // The three sweeps row by row over one block (single_tile() only), and the gradient products
  // when `pass` asks for gradients.
  void rows_pass(int64_t n0, int64_t nb, const RowPass<T>& pass, const bool* active,
                 MedGrads& grads) {
    for_each_tile(
        n0, nb,
        [&](const Tile<T>& tile) {
          kernels_.rows(tile, pass);
          if (pass.coef_a != nullptr) grad_products(n0, nb, tile, grads);
        },
        active);
    cached_ = {-1, -1};
  }

  MedGrads new_grads() const {
    MedGrads g;
    g.hidden = at::zeros(args_.hidden.sizes(), opts());
    if (bf16_) {
      bf16_->zero_weight_grad();  // kept there; g.item_weight stays undefined
    } else {
      g.item_weight = at::zeros(args_.item_weight.sizes(), opts());
    }
    if (bias_.defined()) g.bias = at::zeros_like(bias_);
    return g;
  }

  // Gradients in the caller's dtype.
  std::tuple<at::Tensor, at::Tensor, at::Tensor> finish_grads(const MedGrads& g) const {
    const auto dtype = args_.hidden.scalar_type();
    at::Tensor gb = g.bias.defined() ? g.bias.to(dtype) : at::empty({0}, args_.hidden.options());
    at::Tensor gw = bf16_ ? bf16_->weight_grad(dtype) : g.item_weight.to(dtype);
    return {g.hidden.to(dtype), gw, gb};
  }

 private:
  static constexpr auto kAcc = c10::CppTypeToScalarType<T>::value;

  at::TensorOptions opts() const { return at::TensorOptions().dtype(kAcc); }

  void read_rows() {
    const int64_t* t = target_.data_ptr<int64_t>();
    bool* valid = valid_.data_ptr<bool>();
    T* w = row_weight_.data_ptr<T>();
    at::Tensor rw;
    if (args_.row_weight.has_value()) rw = args_.row_weight->to(kAcc).contiguous();

    for (int64_t n = 0; n < num_rows_; ++n) {
      const bool ignored = t[n] == args_.ignore_index;
      TORCH_CHECK_VALUE(ignored || (t[n] >= 0 && t[n] < num_items_), "target[", n, "] = ", t[n],
                        " is outside [0, ", num_items_, ") and is not ignore_index (",
                        args_.ignore_index, ")");
      T weight = 1;
      if (rw.defined()) {
        weight = rw.data_ptr<T>()[n];
        TORCH_CHECK_VALUE(std::isfinite(weight) && weight >= 0, "row_weight[", n, "] = ", weight,
                          "; weights must be finite and >= 0");
      }
      w[n] = ignored ? T(0) : weight;
      valid[n] = w[n] > T(0);
    }
  }

  template <typename Fn>
  void for_each_tile(int64_t n0, int64_t nb, Fn&& fn, const bool* active) {
    for (int64_t v0 = 0; v0 < num_items_; v0 += plan_.tile_items) {
      const int64_t vt = std::min(plan_.tile_items, num_items_ - v0);
      if (cached_[0] != n0 || cached_[1] != v0) fill(n0, nb, v0, vt);
      Tile<T> tile{
          workspace_.data_ptr<T>(), num_peers_, nb, vt, n0, v0, num_rows_, target(), active};
      fn(tile);
    }
  }

  // Logits of rows [n0, n0 + nb) and items [v0, v0 + vt) for every peer, into the workspace.
  void fill(int64_t n0, int64_t nb, int64_t v0, int64_t vt) {
    for (int64_t k = 0; k < num_peers_; ++k) {
      at::Tensor out = tile_view(k, nb, v0, vt);
      if constexpr (std::is_same_v<T, float>) {
        if (bf16_) {
          bf16_->logits(k, n0, nb, v0, vt, out.data_ptr<float>());
          if (bias_.defined()) out.add_((bias_.dim() == 2 ? bias_[k] : bias_).narrow(0, v0, vt));
          continue;
        }
      }
      const at::Tensor h = hidden_[k].narrow(0, n0, nb);
      const at::Tensor w = weight_tile(k, v0, vt);
      if (bias_.defined()) {
        const at::Tensor b = (bias_.dim() == 2 ? bias_[k] : bias_).narrow(0, v0, vt);
        at::addmm_out(out, b, h, w.t());
      } else {
        at::mm_out(out, h, w.t());
      }
    }
    // Tiles are visited in order, so only the last tile of a block can be reused, and only
    // when it is the block's single tile.
    const bool single = vt == num_items_;
    cached_ = single ? std::array<int64_t, 2>{n0, v0} : std::array<int64_t, 2>{-1, -1};
  }

  // dz of the tile (in the workspace) into the gradients of hidden, the item table and the bias.
  void grad_products(int64_t n0, int64_t nb, const Tile<T>& tile, MedGrads& grads) {
    for (int64_t k = 0; k < num_peers_; ++k) {
      const at::Tensor dz = tile_view(k, nb, tile.item0, tile.cols);  // [nb, cols]
      if (bias_.defined()) bias_grad(grads, k).narrow(0, tile.item0, tile.cols).add_(dz.sum(0));
      if constexpr (std::is_same_v<T, float>) {
        if (bf16_) {
          bf16_->add_grads(k, n0, nb, tile.item0, tile.cols, dz.data_ptr<float>(),
                           grads.hidden[k].narrow(0, n0, nb).data_ptr<float>());
          continue;
        }
      }
      add_hidden_grad(grads.hidden[k].narrow(0, n0, nb), dz, k, tile.item0, tile.cols);
      weight_grad(grads, k)
          .narrow(0, tile.item0, tile.cols)
          .addmm_(dz.t(), hidden_[k].narrow(0, n0, nb));
    }
  }

  // grad_hidden += dz @ W over the tile, one product per kGradSlice items, each into a scratch
  // that is then added. Measured with float32 BLAS at 3e5 items: one long product, or addmm_
  // accumulating in place, loses digits on a block's last rows (2e-5 relative error against
  // 5e-7 for this way).
  void add_hidden_grad(at::Tensor out, const at::Tensor& dz, int64_t k, int64_t v0, int64_t vt) {
    at::Tensor scratch = hidden_scratch_.narrow(0, 0, out.size(0));
    for (int64_t s = 0; s < vt; s += kGradSlice) {
      const int64_t len = std::min(kGradSlice, vt - s);
      at::mm_out(scratch, dz.narrow(1, s, len), weight_tile(k, v0 + s, len));
      out.add_(scratch);
    }
  }

  at::Tensor tile_view(int64_t k, int64_t nb, int64_t /*v0*/, int64_t vt) const {
    return workspace_.narrow(0, k * nb * vt, nb * vt).view({nb, vt});
  }

  at::Tensor weight_tile(int64_t k, int64_t v0, int64_t vt) const {
    return (weight_.dim() == 3 ? weight_[k] : weight_).narrow(0, v0, vt);
  }

  at::Tensor weight_grad(MedGrads& g, int64_t k) const {
    return g.item_weight.dim() == 3 ? g.item_weight[k] : g.item_weight;
  }

  at::Tensor bias_grad(MedGrads& g, int64_t k) const {
    return g.bias.dim() == 2 ? g.bias[k] : g.bias;
  }

  const MedArgs& args_;
  const SweepKernels<T>& kernels_;
  std::unique_ptr<Bf16Products> bf16_;  // null: products in T on hidden_ and weight_
  at::Tensor hidden_, weight_, bias_, target_, row_weight_, valid_, workspace_, hidden_scratch_;
  int64_t num_peers_ = 0, num_rows_ = 0, num_items_ = 0;
  Plan plan_{};
  std::array<int64_t, 2> cached_{-1, -1};
};

template <typename T>
T* ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

template <typename T>
RowStats<T> row_stats(const at::Tensor& saved, const at::Tensor& amax, double gamma) {
  return {ptr<T>(saved[kMax]),        ptr<T>(saved[kLogNorm]),   amax.data_ptr<int64_t>(),
          ptr<T>(saved[kLog1mpAmax]), ptr<T>(saved[kRatioAmax]), static_cast<T>(gamma)};
}

template <typename T>
MedForward forward_impl(const MedArgs& args, bool compute_grad) {
  MedCpu<T> med(args);
  const int64_t num_peers = med.peers();
  const T inf = std::numeric_limits<T>::infinity();

  at::Tensor saved = at::zeros({kNumSaved, num_peers, med.rows()}, med.new_state(0).options());
  at::Tensor max = saved[kMax].fill_(-inf);
  at::Tensor rest = med.new_state(0), target_logit = med.new_state(0);
  at::Tensor amax = at::full({num_peers, med.rows()}, -1, at::kLong);
  const LseState<T> lse_state{ptr<T>(max), ptr<T>(rest), amax.data_ptr<int64_t>(),
                              ptr<T>(target_logit)};
  RowTerms terms{med.new_state(0), med.new_state(0), med.new_state(0), saved[kCoefA]};
  at::Tensor med_sum = med.new_state(0);
  const RowStats<T> stats = row_stats<T>(saved, amax, args.gamma);

  auto slice = [](const at::Tensor& t, int64_t n0, int64_t nb) { return t.narrow(-1, n0, nb); };
  auto lse_block = [&](int64_t n0, int64_t nb) {
    med.lse_pass(n0, nb, lse_state);
    finish_lse(slice(rest, n0, nb), slice(saved[kLogNorm], n0, nb),
               slice(saved[kLog1mpAmax], n0, nb), slice(saved[kRatioAmax], n0, nb));
  };

  // The truncation ranks every row, so with beta > 0 all log-sum-exps come first.
  at::Tensor kept = med.valid_rows();
  const int64_t n_valid = kept.sum().item<int64_t>();
  const bool two_phase = std::floor(args.beta * static_cast<double>(n_valid)) >= 1.0;
  if (two_phase) {
    med.for_each_block(lse_block);
    kept =
        keep_mask(cross_entropy(max, saved[kLogNorm], target_logit), med.valid_rows(), args.beta);
  }

  MedGrads grads;
  if (compute_grad) grads = med.new_grads();
  // Row weights of ignored rows are 0 (read_rows), so they are the weights of "mean".
  at::Tensor unit_grad;
  if (compute_grad) {
    unit_grad = std::get<1>(reduce_rows(med.new_state(0), med.row_weights(), args.reduction));
  }

  // With the whole catalogue in one tile, each row is read from memory once for all sweeps.
  const bool one_visit = med.single_tile() && !two_phase;
  at::Tensor row_coef_a, row_coef_b;  // [K, N]: written by the row pass
  at::Tensor coef_a_all, coef_b_all;  // [K, N]: each block fills its rows before its grad pass
  if (compute_grad) {
    at::Tensor& a = one_visit ? row_coef_a : coef_a_all;
    at::Tensor& b = one_visit ? row_coef_b : coef_b_all;
    a = med.new_state(0);
    if (num_peers > 1 && args.alpha < 1.0) b = med.new_state(0);
  }
  const RowPass<T> pass{lse_state,
                        stats,
                        ptr<T>(saved[kLogNorm]),
                        ptr<T>(saved[kLog1mpAmax]),
                        ptr<T>(saved[kRatioAmax]),
                        ptr<T>(med_sum),
                        ptr<T>(saved[kSRest]),
                        ptr<T>(saved[kSAmax]),
                        med.target(),
                        ptr<T>(med.row_weights()),
                        compute_grad && med.rows() > 0 ? unit_grad[0][0].template item<T>() : T(0),
                        static_cast<T>(args.alpha),
                        ptr<T>(row_coef_a),
                        ptr<T>(row_coef_b)};

  med.for_each_block([&](int64_t n0, int64_t nb) {
    if (one_visit) {
      med.rows_pass(n0, nb, pass, kept.data_ptr<bool>(), grads);
    } else {
      if (!two_phase) lse_block(n0, nb);
      if (num_peers > 1) {
        med.med_pass(n0, nb, stats, kept.data_ptr<bool>(), ptr<T>(med_sum), ptr<T>(saved[kSRest]),
                     ptr<T>(saved[kSAmax]));
      }
    }
    RowTerms block{slice(terms.rows, n0, nb), slice(terms.ce, n0, nb), slice(terms.med, n0, nb),
                   slice(terms.coef_a, n0, nb)};
    row_terms(slice(max, n0, nb), slice(saved[kLogNorm], n0, nb), slice(target_logit, n0, nb),
              slice(amax, n0, nb), slice(saved[kLog1mpAmax], n0, nb), slice(med_sum, n0, nb),
              slice(med.targets(), n0, nb), slice(med.row_weights(), n0, nb),
              slice(med.valid_rows(), n0, nb), slice(kept, n0, nb), args.alpha, args.gamma, block);
    if (compute_grad && !one_visit) {
      // With unit upstream gradients; the autograd backward scales them by its scalar gradient.
      auto [coef_a, coef_b] =
          grad_coefs(slice(unit_grad, n0, nb), slice(med.row_weights(), n0, nb),
                     slice(kept, n0, nb), slice(saved[kCoefA], n0, nb), num_peers, args.alpha);
      slice(coef_a_all, n0, nb).copy_(coef_a);
      if (coef_b.defined()) slice(coef_b_all, n0, nb).copy_(coef_b);
      med.grad_pass(n0, nb, stats, kept.data_ptr<bool>(), ptr<T>(coef_a_all), ptr<T>(coef_b_all),
                    ptr<T>(saved[kSRest]), ptr<T>(saved[kSAmax]), grads);
    }
  });

  auto [grad_hidden, grad_weight, grad_bias] =
      compute_grad ? med.finish_grads(grads)
                   : std::make_tuple(at::empty({0}, args.hidden.options()),
                                     at::empty({0}, args.hidden.options()),
                                     at::empty({0}, args.hidden.options()));
  // Rows without loss never had their state set: give them zeros rather than -inf and NaN.
  saved.masked_fill_(med.valid_rows().logical_not(), 0.0);
  const at::Tensor loss = std::get<0>(reduce_rows(terms.rows, med.row_weights(), args.reduction));
  return {loss, terms.ce, terms.med, kept, saved, amax, grad_hidden, grad_weight, grad_bias};
}

template <typename T>
MedBackward backward_impl(const at::Tensor& grad_rows, const MedArgs& args, const at::Tensor& kept,
                          const at::Tensor& saved_in, const at::Tensor& amax_in) {
  MedCpu<T> med(args);
  const at::Tensor saved = saved_in.to(c10::CppTypeToScalarType<T>::value).contiguous();
  const at::Tensor amax = amax_in.contiguous();
  const at::Tensor active = kept.contiguous();
  const RowStats<T> stats = row_stats<T>(saved, amax, args.gamma);

  auto [coef_a, coef_b] = grad_coefs(grad_rows.to(saved.scalar_type()), med.row_weights(), active,
                                     saved[kCoefA], med.peers(), args.alpha);
  MedGrads grads = med.new_grads();
  med.for_each_block([&](int64_t n0, int64_t nb) {
    med.grad_pass(n0, nb, stats, active.data_ptr<bool>(), ptr<T>(coef_a), ptr<T>(coef_b),
                  ptr<T>(saved[kSRest]), ptr<T>(saved[kSAmax]), grads);
  });
  return med.finish_grads(grads);
}

bool use_double(const at::Tensor& hidden) { return hidden.scalar_type() == at::kDouble; }

}  // namespace

MedForward med_forward_cpu(const at::Tensor& hidden, const at::Tensor& item_weight,
                           const at::Tensor& target, const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& row_weight, int64_t ignore_index,
                           double alpha, double gamma, double beta, int64_t reduction,
                           bool compute_grad) {
  check_args(hidden, item_weight, target, bias, row_weight, alpha, gamma, beta, reduction);
  const MedArgs args{hidden,       item_weight, target, bias, row_weight,
                     ignore_index, alpha,       gamma,  beta, reduction};
  compute_grad = compute_grad && reduction != kReductionNone;
  return use_double(hidden) ? forward_impl<double>(args, compute_grad)
                            : forward_impl<float>(args, compute_grad);
}

MedBackward med_backward_cpu(const at::Tensor& grad_rows, const at::Tensor& hidden,
                             const at::Tensor& item_weight, const at::Tensor& target,
                             const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& row_weight, const at::Tensor& kept,
                             const at::Tensor& saved, const at::Tensor& amax, int64_t ignore_index,
                             double alpha, double gamma) {
  check_args(hidden, item_weight, target, bias, row_weight, alpha, gamma, 0.0, kReductionNone);
  const MedArgs args{hidden,       item_weight, target, bias, row_weight,
                     ignore_index, alpha,       gamma,  0.0,  kReductionNone};
  return use_double(hidden) ? backward_impl<double>(grad_rows, args, kept, saved, amax)
                            : backward_impl<float>(grad_rows, args, kept, saved, amax);
}

}  // namespace hail_ext::cpu

TORCH_LIBRARY_IMPL(hail_ext, CPU, m) {
  m.impl("med_forward", &hail_ext::cpu::med_forward_cpu);
  m.impl("med_backward", &hail_ext::cpu::med_backward_cpu);
}
