// The operators hail_ext::med_forward and hail_ext::med_backward (schemas in ops.cpp), and the
// per-row algebra that every device shares. Tensors named [K, N] hold one number per peer and row.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace hail_ext {

struct MedArgs {
  at::Tensor hidden;                     // [K, N, d]
  at::Tensor item_weight;                // [V, d] or [K, V, d]
  at::Tensor target;                     // [N] int64
  std::optional<at::Tensor> bias;        // [V] or [K, V]
  std::optional<at::Tensor> row_weight;  // [N]
  int64_t ignore_index;
  double alpha, gamma, beta;
  int64_t reduction;  // kReductionNone, kReductionMean or kReductionSum
};

// As torch's at::Reduction: the loss is [K, N] rows, their sum / total row weight, or their sum.
enum Reduction : int64_t { kReductionNone = 0, kReductionMean = 1, kReductionSum = 2 };

struct MedGrads {
  at::Tensor hidden, item_weight, bias;  // bias undefined when there is none
};

// loss ([K, N] rows, or a scalar), ce, med [K, N] and kept [N] (the valid rows that the
// truncation kept); saved [7, K, N] and amax [K, N] for the backward; grad_hidden,
// grad_item_weight, grad_bias of the loss for a unit upstream gradient (empty unless compute_grad
// and reduction is mean or sum).
using MedForward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                              at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using MedBackward = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// Rows of saved: what the gradient sweep needs besides the inputs.
// The log-sum-exp of a row is max + log_norm (log_norm = log1p(rest), see cpu/sweeps.h).
enum SavedRow : int64_t {
  kMax = 0,
  kLogNorm,
  kSRest,
  kSAmax,
  kCoefA,
  kLog1mpAmax,
  kRatioAmax,
  kNumSaved
};

// Per-row algebra of docs/SPEC.md on [K, n] slices, written with ATen ops so that any device
// shares it. Rows that are not active get 0 everywhere.
struct RowTerms {
  at::Tensor rows, ce, med, coef_a;  // outputs, [K, n]
};
void row_terms(const at::Tensor& max, const at::Tensor& log_norm, const at::Tensor& target_logit,
               const at::Tensor& amax, const at::Tensor& log1mp_amax, const at::Tensor& med_sum,
               const at::Tensor& target, const at::Tensor& row_weight, const at::Tensor& valid,
               const at::Tensor& active, double alpha, double gamma, RowTerms& out);

// log_norm = log1p(rest), and log(1 - p) and p / (1 - p) of the arg-max item, in place.
void finish_lse(const at::Tensor& rest, at::Tensor log_norm, at::Tensor log1mp_amax,
                at::Tensor ratio_amax);

// Cross-entropy (lse - target logit) as (max - target logit) + log_norm.
at::Tensor cross_entropy(const at::Tensor& max, const at::Tensor& log_norm,
                         const at::Tensor& target_logit);

// The truncation mask: valid rows not among every peer's floor(beta * n_valid) hardest.
at::Tensor keep_mask(const at::Tensor& ce, const at::Tensor& valid, double beta);

// Multiplier of each row's dL/dz: grad_row * w * active * A, and * (1 - alpha) for the peers.
std::tuple<at::Tensor, at::Tensor> grad_coefs(const at::Tensor& grad_rows,
                                              const at::Tensor& row_weight,
                                              const at::Tensor& active, const at::Tensor& coef_a,
                                              int64_t num_peers, double alpha);

}  // namespace hail_ext

namespace hail_ext {

// Shapes, dtypes, devices and options of the operators' inputs; values (target range, weights)
// are checked by the kernels as they read them.
void check_args(const at::Tensor& hidden, const at::Tensor& item_weight, const at::Tensor& target,
                const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& row_weight,
                double alpha, double gamma, double beta, int64_t reduction);

// The reduced loss of [K, N] rows, and the upstream gradient of each row for a unit gradient on
// it; a mean over zero total weight is 0 with zero gradients.
std::tuple<at::Tensor, at::Tensor> reduce_rows(const at::Tensor& rows, const at::Tensor& row_weight,
                                               int64_t reduction);

}  // namespace hail_ext
