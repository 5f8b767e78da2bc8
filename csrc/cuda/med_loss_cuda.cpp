// The HAIL loss on CUDA: the sweeps of docs/SPEC.md over row blocks and item tiles.
//
// The orchestration of csrc/cpu/med_loss_cpu.cpp on the device: for each block of rows the logits
// of all K peers are computed one item tile at a time by cuBLAS into a [K, rows, items] float32
// (float64 for float64 inputs) workspace, and the kernels of sweeps_cuda.h read it. float16 and
// bfloat16 products run on tensor cores with float32 output (mm with out_dtype); their gradient
// products read dz rounded to the input type and accumulate in float32. The per-row algebra
// (med_rows.cpp) runs as ATen ops on [K, N] device tensors. The host synchronises once per call
// to learn whether the rows are valid (and, with beta > 0, in keep_mask).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>

#include "../med_loss.h"
#include "../plan.h"
#include "sweeps_cuda.h"

namespace hail_ext::cuda {
namespace {

// Whole-catalogue blocks of 128 to 4096 rows, else blocks of 512 rows over tiles of items.
constexpr PlanLimits kCudaPlan{/*workspace_mb=*/512,    /*tiled_workspace_mb=*/512,
                               /*min_block_rows=*/128,
                               /*max_block_rows=*/4096, /*tiled_block_rows=*/512,
                               /*tile_align=*/128};
constexpr int64_t kProductRows = 8192;  // rows of one float32 partial gradient product
// float16 dz is scaled so that its bound |coef_a| + 4 |coef_b| lands near this power of two: dz of
// a mean over many rows would otherwise sink into float16's subnormals.
constexpr double kHalfDzTarget = 1024.0;

// mm with a float32 result from float16/bfloat16 inputs. Should this torch lack that overload
// on the device, fall back (once, with a warning) to float32 products of widened copies: slower,
// never less exact. Out-of-memory and CUDA errors are not taken for a missing overload.
void product_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  static std::atomic<bool> out_dtype_works{true};
  if (out_dtype_works.load()) {
    try {
      at::mm_out(out, a, b, out.scalar_type());
      return;
    } catch (const c10::OutOfMemoryError&) {
      throw;
    } catch (const c10::AcceleratorError&) {
      throw;
    } catch (const c10::Error& error) {
      out_dtype_works.store(false);
      TORCH_WARN("hail_ext: mm with out_dtype=float32 failed (", error.what_without_backtrace(),
                 "); widening the tile products' inputs to float32 instead");
    }
  }
  at::mm_out(out, a.to(out.scalar_type()), b.to(out.scalar_type()));
}

template <typename T>
class MedCuda {
 public:
  explicit MedCuda(const MedArgs& args)
      : args_(args),
        acc_(c10::CppTypeToScalarType<T>::value),
        stream_(at::cuda::getCurrentCUDAStream()) {
    hidden_ = args.hidden.contiguous();
    weight_ = args.item_weight.contiguous();
    half_ = hidden_.scalar_type() != acc_;
    if (args.bias.has_value()) bias_ = args.bias->to(acc_).contiguous();
    num_peers_ = hidden_.size(0);
    num_rows_ = hidden_.size(1);
    num_items_ = weight_.size(-2);

    const int64_t elt = static_cast<int64_t>(sizeof(T)) + (half_ ? hidden_.element_size() : 0);
    plan_ = make_plan(kCudaPlan, num_peers_, num_rows_, num_items_, elt);
    const int64_t tile_elems = num_peers_ * plan_.block_rows * plan_.tile_items;
    workspace_ = at::empty({tile_elems}, opts());
    if (half_) dz_half_ = at::empty({tile_elems}, hidden_.options());

    target_ = args.target.contiguous();
    row_weight_ = at::empty({num_rows_}, opts());
    valid_ = at::empty({num_rows_}, opts().dtype(at::kBool));
    read_rows_checked();
  }

  int64_t peers() const { return num_peers_; }
  int64_t rows() const { return num_rows_; }
  int64_t valid_count() const { return valid_count_; }
  at::TensorOptions opts() const { return hidden_.options().dtype(acc_); }
  at::Tensor new_state(T fill) const { return at::full({num_peers_, num_rows_}, fill, opts()); }
  const at::Tensor& valid_rows() const { return valid_; }
  const at::Tensor& row_weights() const { return row_weight_; }
  const at::Tensor& targets() const { return target_; }

  template <typename Fn>
  void for_each_block(Fn&& fn) {
    for (int64_t n0 = 0; n0 < num_rows_; n0 += plan_.block_rows) {
      fn(n0, std::min(plan_.block_rows, num_rows_ - n0));
    }
  }

  // Sweep 1 over one block, for its valid rows.
  void lse_pass(int64_t n0, int64_t nb, const LseState<T>& state) {
    for_each_tile(n0, nb, valid_.data_ptr<bool>(), [&](const Tile<T>& tile) {
      lse_sweep(tile, state, scratch(lse_scratch_bytes(tile)), stream_);
    });
  }

  // Sweep 2 over one block, for the rows flagged in `active`.
  void med_pass(int64_t n0, int64_t nb, const RowStats<T>& stats, const bool* active, T* med_sum,
                T* s_rest, T* s_amax) {
    for_each_tile(n0, nb, active, [&](const Tile<T>& tile) {
      med_sweep(tile, stats, med_sum, s_rest, s_amax, scratch(med_scratch_bytes(tile)), stream_);
    });
  }

  // Sweep 3 over one block, and the two gradient products of each tile. coef_a and coef_b are
  // [K, N] (coef_b undefined without the peers' term).
  void grad_pass(int64_t n0, int64_t nb, const RowStats<T>& stats, const bool* active,
                 const at::Tensor& coef_a, const at::Tensor& coef_b, const T* s_rest,
                 const T* s_amax, MedGrads& grads) {
    set_dz_scale(coef_a.narrow(1, n0, nb), coef_b.defined() ? coef_b.narrow(1, n0, nb) : coef_b);
    const T* a = coef_a.data_ptr<T>();
    const T* b = coef_b.defined() ? coef_b.data_ptr<T>() : nullptr;
    for_each_tile(n0, nb, active, [&](const Tile<T>& tile) {
      write_dz(tile, stats, a, b, s_rest, s_amax);
      for (int64_t k = 0; k < num_peers_; ++k) {
        const at::Tensor dz = dz_view(k, nb, tile.cols);  // [nb, cols]
        const at::Tensor w = weight_tile(k, tile.item0, tile.cols);
        const at::Tensor h = hidden_[k].narrow(0, n0, nb);
        at::Tensor grad_h = grads.hidden[k].narrow(0, n0, nb);
        at::Tensor grad_w = weight_grad(grads, k).narrow(0, tile.item0, tile.cols);
        if (half_) {
          accumulate_product(grad_h, dz, w);
          accumulate_product(grad_w, dz.t(), h);
        } else {
          grad_h.addmm_(dz, w);
          grad_w.addmm_(dz.t(), h);
        }
        if (bias_.defined()) {
          at::Tensor dz_sum = at::sum(dz, {0}, false, acc_);
          if (dz_unscale_.defined()) dz_sum.mul_(dz_unscale_);
          bias_grad(grads, k).narrow(0, tile.item0, tile.cols).add_(dz_sum);
        }
      }
    });
    if (!half_) cached_ = {-1, -1};  // the workspace now holds dz
  }

  MedGrads new_grads() const {
    MedGrads g;
    g.hidden = at::zeros(hidden_.sizes(), opts());
    g.item_weight = at::zeros(weight_.sizes(), opts());
    if (bias_.defined()) g.bias = at::zeros_like(bias_);
    return g;
  }

  // Gradients in the caller's dtype.
  std::tuple<at::Tensor, at::Tensor, at::Tensor> finish_grads(const MedGrads& g) const {
    const auto dtype = args_.hidden.scalar_type();
    at::Tensor gb = g.bias.defined() ? g.bias.to(dtype) : at::empty({0}, args_.hidden.options());
    return {g.hidden.to(dtype), g.item_weight.to(dtype), gb};
  }

 private:
  // Row weights and validity on the device; one copy to the host tells whether any row is bad.
  void read_rows_checked() {
    at::Tensor rw;
    if (args_.row_weight.has_value()) rw = args_.row_weight->to(acc_).contiguous();
    const int64_t none = std::numeric_limits<int64_t>::max();
    at::Tensor facts = at::full({3}, none, opts().dtype(at::kLong));
    facts.narrow(0, 2, 1).zero_();
    read_rows<T>(target_.data_ptr<int64_t>(), rw.defined() ? rw.data_ptr<T>() : nullptr, num_rows_,
                 num_items_, args_.ignore_index, row_weight_.data_ptr<T>(), valid_.data_ptr<bool>(),
                 facts.data_ptr<int64_t>(), stream_);

    const at::Tensor host = facts.cpu();
    const int64_t bad_target = host[0].item<int64_t>(), bad_weight = host[1].item<int64_t>();
    valid_count_ = host[2].item<int64_t>();
    if (bad_target < num_rows_ && bad_target <= bad_weight) {
      TORCH_CHECK_VALUE(false, "target[", bad_target, "] = ", target_[bad_target].item<int64_t>(),
                        " is outside [0, ", num_items_, ") and is not ignore_index (",
                        args_.ignore_index, ")");
    }
    TORCH_CHECK_VALUE(bad_weight >= num_rows_, "row_weight[", bad_weight,
                      "] = ", bad_weight < num_rows_ ? rw[bad_weight].item<double>() : 0.0,
                      "; weights must be finite and >= 0");
  }

  void* scratch(int64_t bytes) {
    if (!scratch_.defined() || scratch_.numel() < bytes) {
      scratch_ = at::empty({std::max<int64_t>(bytes, 1)}, opts().dtype(at::kByte));
    }
    return scratch_.data_ptr();
  }

  template <typename Fn>
  void for_each_tile(int64_t n0, int64_t nb, const bool* active, Fn&& fn) {
    for (int64_t v0 = 0; v0 < num_items_; v0 += plan_.tile_items) {
      const int64_t vt = std::min(plan_.tile_items, num_items_ - v0);
      if (cached_[0] != n0 || cached_[1] != v0) fill(n0, nb, v0, vt);
      const Tile<T> tile{workspace_.data_ptr<T>(),    num_peers_, nb, vt, n0, v0, num_rows_,
                         target_.data_ptr<int64_t>(), active};
      fn(tile);
    }
  }

  // Logits of rows [n0, n0 + nb) and items [v0, v0 + vt) for every peer, into the workspace.
  void fill(int64_t n0, int64_t nb, int64_t v0, int64_t vt) {
    for (int64_t k = 0; k < num_peers_; ++k) {
      at::Tensor out = workspace_.narrow(0, k * nb * vt, nb * vt).view({nb, vt});
      const at::Tensor h = hidden_[k].narrow(0, n0, nb);
      const at::Tensor w = weight_tile(k, v0, vt);
      const at::Tensor b =
          bias_.defined() ? (bias_.dim() == 2 ? bias_[k] : bias_).narrow(0, v0, vt) : at::Tensor();
      if (half_) {
        product_into(out, h, w.t());
        if (b.defined()) out.add_(b);
      } else if (b.defined()) {
        at::addmm_out(out, b, h, w.t());
      } else {
        at::mm_out(out, h, w.t());
      }
    }
    // Only a block's single tile can be reused, by the next sweep of the same block.
    const bool single = vt == num_items_;
    cached_ = single ? std::array<int64_t, 2>{n0, v0} : std::array<int64_t, 2>{-1, -1};
  }

  // float16 only: a power of two for dz from a bound on it (see kHalfDzTarget), kept on the
  // device so that no synchronisation is needed; dz_unscale_ undoes it in the products.
  void set_dz_scale(const at::Tensor& coef_a, const at::Tensor& coef_b) {
    if (!half_ || dz_half_.scalar_type() != at::kHalf) return;
    at::Tensor bound = coef_a.abs().amax();
    if (coef_b.defined()) bound = at::maximum(bound, (coef_a.abs() + 4.0 * coef_b.abs()).amax());
    const at::Tensor exponent = at::floor(at::log2(kHalfDzTarget / bound.clamp_min(1e-30)));
    dz_scale_ = at::exp2(exponent.clamp(-60.0, 60.0));
    dz_unscale_ = at::reciprocal(dz_scale_);
  }

  void write_dz(const Tile<T>& tile, const RowStats<T>& stats, const T* coef_a, const T* coef_b,
                const T* s_rest, const T* s_amax) {
    if constexpr (std::is_same_v<T, float>) {
      if (half_ && dz_half_.scalar_type() == at::kBFloat16) {
        grad_sweep(tile, stats, coef_a, coef_b, s_rest, s_amax, static_cast<const T*>(nullptr),
                   dz_half_.data_ptr<c10::BFloat16>(), stream_);
        return;
      }
      if (half_) {
        grad_sweep(tile, stats, coef_a, coef_b, s_rest, s_amax, dz_scale_.data_ptr<T>(),
                   dz_half_.data_ptr<c10::Half>(), stream_);
        return;
      }
    }
    grad_sweep(tile, stats, coef_a, coef_b, s_rest, s_amax, static_cast<const T*>(nullptr),
               workspace_.data_ptr<T>(), stream_);
  }

  at::Tensor dz_view(int64_t k, int64_t nb, int64_t vt) const {
    const at::Tensor& buffer = half_ ? dz_half_ : workspace_;
    return buffer.narrow(0, k * nb * vt, nb * vt).view({nb, vt});
  }

  // out (float32, [m, d]) += a [m, inner] @ b [inner, d] for half-precision a and b, through a
  // float32 product of at most kProductRows rows at a time.
  void accumulate_product(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
    const int64_t m = a.size(0);
    if (!product_.defined()) product_ = at::empty({kProductRows, b.size(1)}, opts());
    for (int64_t i0 = 0; i0 < m; i0 += kProductRows) {
      const int64_t mi = std::min(kProductRows, m - i0);
      at::Tensor part = product_.narrow(0, 0, mi);
      product_into(part, a.narrow(0, i0, mi), b);
      if (dz_unscale_.defined()) part.mul_(dz_unscale_);
      out.narrow(0, i0, mi).add_(part);
    }
  }

  at::Tensor weight_tile(int64_t k, int64_t v0, int64_t vt) const {
    return (weight_.dim() == 3 ? weight_[k] : weight_).narrow(0, v0, vt);
  }

  static at::Tensor weight_grad(MedGrads& g, int64_t k) {
    return g.item_weight.dim() == 3 ? g.item_weight[k] : g.item_weight;
  }

  static at::Tensor bias_grad(MedGrads& g, int64_t k) {
    return g.bias.dim() == 2 ? g.bias[k] : g.bias;
  }

  const MedArgs& args_;
  const at::ScalarType acc_;
  const cudaStream_t stream_;
  bool half_ = false;
  at::Tensor hidden_, weight_, bias_, target_, row_weight_, valid_;
  at::Tensor workspace_, dz_half_, scratch_, product_, dz_scale_, dz_unscale_;
  int64_t num_peers_ = 0, num_rows_ = 0, num_items_ = 0, valid_count_ = 0;
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

at::Tensor slice(const at::Tensor& t, int64_t n0, int64_t nb) { return t.narrow(-1, n0, nb); }

template <typename T>
MedForward forward_impl(const MedArgs& args, bool compute_grad) {
  MedCuda<T> med(args);
  const int64_t num_peers = med.peers();
  const T inf = std::numeric_limits<T>::infinity();

  at::Tensor saved = at::zeros({kNumSaved, num_peers, med.rows()}, med.opts());
  at::Tensor max = saved[kMax].fill_(-inf);
  at::Tensor rest = med.new_state(0), target_logit = med.new_state(0);
  at::Tensor amax = at::full({num_peers, med.rows()}, -1, med.opts().dtype(at::kLong));
  const LseState<T> lse_state{ptr<T>(max), ptr<T>(rest), amax.data_ptr<int64_t>(),
                              ptr<T>(target_logit)};
  RowTerms terms{med.new_state(0), med.new_state(0), med.new_state(0), saved[kCoefA]};
  at::Tensor med_sum = med.new_state(0);
  const RowStats<T> stats = row_stats<T>(saved, amax, args.gamma);

  auto lse_block = [&](int64_t n0, int64_t nb) {
    med.lse_pass(n0, nb, lse_state);
    finish_lse(slice(rest, n0, nb), slice(saved[kLogNorm], n0, nb),
               slice(saved[kLog1mpAmax], n0, nb), slice(saved[kRatioAmax], n0, nb));
  };

  // The truncation ranks every row, so with beta > 0 all log-sum-exps come first.
  at::Tensor kept = med.valid_rows();
  const auto n_valid = static_cast<double>(med.valid_count());
  const bool two_phase = std::floor(args.beta * n_valid) >= 1.0;
  if (two_phase) {
    med.for_each_block(lse_block);
    kept =
        keep_mask(cross_entropy(max, saved[kLogNorm], target_logit), med.valid_rows(), args.beta);
  }

  MedGrads grads;
  at::Tensor unit_grad, coef_a_all, coef_b_all;  // [K, N], each block fills its rows
  if (compute_grad) {
    grads = med.new_grads();
    // Ignored rows have weight 0, so the row weights are the weights of "mean".
    unit_grad = std::get<1>(reduce_rows(med.new_state(0), med.row_weights(), args.reduction));
    coef_a_all = med.new_state(0);
    if (num_peers > 1 && args.alpha < 1.0) coef_b_all = med.new_state(0);
  }

  med.for_each_block([&](int64_t n0, int64_t nb) {
    if (!two_phase) lse_block(n0, nb);
    if (num_peers > 1) {
      med.med_pass(n0, nb, stats, kept.data_ptr<bool>(), ptr<T>(med_sum), ptr<T>(saved[kSRest]),
                   ptr<T>(saved[kSAmax]));
    }
    RowTerms block{slice(terms.rows, n0, nb), slice(terms.ce, n0, nb), slice(terms.med, n0, nb),
                   slice(terms.coef_a, n0, nb)};
    row_terms(slice(max, n0, nb), slice(saved[kLogNorm], n0, nb), slice(target_logit, n0, nb),
              slice(amax, n0, nb), slice(saved[kLog1mpAmax], n0, nb), slice(med_sum, n0, nb),
              slice(med.targets(), n0, nb), slice(med.row_weights(), n0, nb),
              slice(med.valid_rows(), n0, nb), slice(kept, n0, nb), args.alpha, args.gamma, block);
    if (compute_grad) {
      // With unit upstream gradients; the autograd backward scales them by its scalar gradient.
      auto [coef_a, coef_b] =
          grad_coefs(slice(unit_grad, n0, nb), slice(med.row_weights(), n0, nb),
                     slice(kept, n0, nb), slice(saved[kCoefA], n0, nb), num_peers, args.alpha);
      slice(coef_a_all, n0, nb).copy_(coef_a);
      if (coef_b.defined()) slice(coef_b_all, n0, nb).copy_(coef_b);
      med.grad_pass(n0, nb, stats, kept.data_ptr<bool>(), coef_a_all, coef_b_all,
                    ptr<T>(saved[kSRest]), ptr<T>(saved[kSAmax]), grads);
    }
  });

  const at::Tensor none = at::empty({0}, args.hidden.options());
  auto [grad_hidden, grad_weight, grad_bias] =
      compute_grad ? med.finish_grads(grads) : std::make_tuple(none, none, none);
  // Rows without loss never had their state set: give them zeros rather than -inf and NaN.
  saved.masked_fill_(med.valid_rows().logical_not(), 0.0);
  const at::Tensor loss = std::get<0>(reduce_rows(terms.rows, med.row_weights(), args.reduction));
  return {loss, terms.ce, terms.med, kept, saved, amax, grad_hidden, grad_weight, grad_bias};
}

template <typename T>
MedBackward backward_impl(const at::Tensor& grad_rows, const MedArgs& args, const at::Tensor& kept,
                          const at::Tensor& saved_in, const at::Tensor& amax_in) {
  MedCuda<T> med(args);
  const at::Tensor saved = saved_in.to(med.opts()).contiguous();
  const at::Tensor amax = amax_in.to(med.opts().dtype(at::kLong)).contiguous();
  const at::Tensor active = kept.to(med.opts().dtype(at::kBool)).contiguous();
  const RowStats<T> stats = row_stats<T>(saved, amax, args.gamma);

  auto [coef_a, coef_b] = grad_coefs(grad_rows.to(med.opts()), med.row_weights(), active,
                                     saved[kCoefA], med.peers(), args.alpha);
  MedGrads grads = med.new_grads();
  med.for_each_block([&](int64_t n0, int64_t nb) {
    med.grad_pass(n0, nb, stats, active.data_ptr<bool>(), coef_a, coef_b, ptr<T>(saved[kSRest]),
                  ptr<T>(saved[kSAmax]), grads);
  });
  return med.finish_grads(grads);
}

bool use_double(const at::Tensor& hidden) { return hidden.scalar_type() == at::kDouble; }

void check_cuda_args(const at::Tensor& hidden) {
  TORCH_CHECK_VALUE(hidden.size(0) <= kMaxPeers, "the CUDA kernels take at most ", kMaxPeers,
                    " peers, got K = ", hidden.size(0),
                    "; use hail_ext.reference.med_loss or the CPU operator for more");
}

}  // namespace

MedForward med_forward_cuda(const at::Tensor& hidden, const at::Tensor& item_weight,
                            const at::Tensor& target, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& row_weight, int64_t ignore_index,
                            double alpha, double gamma, double beta, int64_t reduction,
                            bool compute_grad) {
  check_args(hidden, item_weight, target, bias, row_weight, alpha, gamma, beta, reduction);
  check_cuda_args(hidden);
  const c10::cuda::CUDAGuard guard(hidden.device());
  const MedArgs args{hidden,       item_weight, target, bias, row_weight,
                     ignore_index, alpha,       gamma,  beta, reduction};
  compute_grad = compute_grad && reduction != kReductionNone;
  return use_double(hidden) ? forward_impl<double>(args, compute_grad)
                            : forward_impl<float>(args, compute_grad);
}

MedBackward med_backward_cuda(const at::Tensor& grad_rows, const at::Tensor& hidden,
                              const at::Tensor& item_weight, const at::Tensor& target,
                              const std::optional<at::Tensor>& bias,
                              const std::optional<at::Tensor>& row_weight, const at::Tensor& kept,
                              const at::Tensor& saved, const at::Tensor& amax, int64_t ignore_index,
                              double alpha, double gamma) {
  check_args(hidden, item_weight, target, bias, row_weight, alpha, gamma, 0.0, kReductionNone);
  check_cuda_args(hidden);
  const c10::cuda::CUDAGuard guard(hidden.device());
  const MedArgs args{hidden,       item_weight, target, bias, row_weight,
                     ignore_index, alpha,       gamma,  0.0,  kReductionNone};
  return use_double(hidden) ? backward_impl<double>(grad_rows, args, kept, saved, amax)
                            : backward_impl<float>(grad_rows, args, kept, saved, amax);
}

}  // namespace hail_ext::cuda

TORCH_LIBRARY_IMPL(hail_ext, CUDA, m) {
  m.impl("med_forward", &hail_ext::cuda::med_forward_cuda);
  m.impl("med_backward", &hail_ext::cuda::med_backward_cuda);
}
