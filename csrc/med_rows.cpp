// Per-row algebra of the HAIL loss, shared by the CPU and CUDA operators (see med_loss.h).
#include <cmath>
#include <limits>

#include "med_loss.h"

namespace hail_ext {

void finish_lse(const at::Tensor& rest, at::Tensor log_norm, at::Tensor log1mp_amax,
                at::Tensor ratio_amax) {
  const at::Tensor log1p_rest = at::log1p(rest);
  log_norm.copy_(log1p_rest);
  log1mp_amax.copy_(at::log(rest) - log1p_rest);
  ratio_amax.copy_(at::reciprocal(rest));
}

// For each peer k, the mean over the other peers j != k of x[j] (summed directly, not as a
// total minus x[k], which would cancel when x[k] dominates).
static at::Tensor mean_of_others(const at::Tensor& x) {
  const int64_t num_peers = x.size(0);
  std::vector<at::Tensor> means;
  for (int64_t k = 0; k < num_peers; ++k) {
    at::Tensor sum = at::zeros_like(x[0]);
    for (int64_t j = 0; j < num_peers; ++j) {
      if (j != k) sum = sum + x[j];
    }
    means.push_back(sum / static_cast<double>(num_peers - 1));
  }
  return at::stack(means);
}

at::Tensor cross_entropy(const at::Tensor& max, const at::Tensor& log_norm,
                         const at::Tensor& target_logit) {
  return (max - target_logit) + log_norm;
}

void row_terms(const at::Tensor& max, const at::Tensor& log_norm, const at::Tensor& target_logit,
               const at::Tensor& amax, const at::Tensor& log1mp_amax, const at::Tensor& med_sum,
               const at::Tensor& target, const at::Tensor& row_weight, const at::Tensor& valid,
               const at::Tensor& active, double alpha, double gamma, RowTerms& out) {
  const int64_t num_peers = max.size(0);
  const at::Tensor zero = at::zeros({}, max.options());
  const at::Tensor ce = cross_entropy(max, log_norm, target_logit);
  out.ce.copy_(at::where(valid, ce, zero));
  const at::Tensor weight = at::where(active, row_weight, zero);

  if (num_peers == 1) {
    out.rows.copy_(at::where(active, weight * ce, zero));
    out.med.zero_();
    // Not a constant 1: a NaN row (non-finite input) must give NaN gradients, not finite ones.
    out.coef_a.copy_(at::where(at::isnan(ce), ce, at::ones_like(ce)));
    return;
  }

  // log(1 - q_j(t)); exact from the lse state when the target is peer j's arg-max item.
  const at::Tensor log1mq =
      at::where(target.unsqueeze(0) == amax, log1mp_amax, at::log(-at::expm1(-ce)));
  const at::Tensor a = mean_of_others(at::exp(gamma * log1mq));
  const at::Tensor med = a * ce - med_sum;
  out.med.copy_(at::where(active, med, zero));
  out.rows.copy_(at::where(active, weight * (alpha * ce + (1.0 - alpha) * med), zero));
  out.coef_a.copy_(alpha + (1.0 - alpha) * a);
}

at::Tensor keep_mask(const at::Tensor& ce, const at::Tensor& valid, double beta) {
  const int64_t n_valid = valid.sum().item<int64_t>();
  const auto n_drop = static_cast<int64_t>(std::floor(beta * static_cast<double>(n_valid)));
  if (n_drop == 0) return valid.clone();
  TORCH_CHECK_VALUE(
      !at::isnan(at::where(valid, ce, at::zeros({}, ce.options()))).any().item<bool>(),
      "the cross-entropy of a valid row is NaN (non-finite inputs?): the truncation "
      "(beta = ",
      beta, ") cannot rank the rows");

  const double lowest = -std::numeric_limits<double>::infinity();
  at::Tensor dropped_by_all = at::ones_like(valid);
  for (int64_t k = 0; k < ce.size(0); ++k) {
    // Highest CE first; a stable sort ranks the lower row index first among equals.
    const at::Tensor key = at::where(valid, ce[k], at::full({}, lowest, ce.options()));
    const at::Tensor order = std::get<1>(at::sort(key, /*stable=*/true, /*dim=*/0,
                                                  /*descending=*/true));
    at::Tensor hardest = at::zeros_like(valid);
    hardest.index_fill_(0, order.narrow(0, 0, n_drop), true);
    dropped_by_all.logical_and_(hardest);
  }
  return valid.logical_and(dropped_by_all.logical_not());
}

std::tuple<at::Tensor, at::Tensor> grad_coefs(const at::Tensor& grad_rows,
                                              const at::Tensor& row_weight,
                                              const at::Tensor& active, const at::Tensor& coef_a,
                                              int64_t num_peers, double alpha) {
  const at::Tensor zero = at::zeros({}, coef_a.options());
  const at::Tensor scale = at::where(active, grad_rows * row_weight, zero);  // [K, N]
  // Masked again: rows that never had a sweep carry NaN in coef_a, and 0 * NaN is NaN.
  const at::Tensor a = at::where(active, scale * coef_a, zero).contiguous();
  const at::Tensor b =
      num_peers > 1 && alpha < 1.0 ? (scale * (1.0 - alpha)).contiguous() : at::Tensor();
  return {a, b};
}

std::tuple<at::Tensor, at::Tensor> reduce_rows(const at::Tensor& rows, const at::Tensor& row_weight,
                                               int64_t reduction) {
  if (reduction == kReductionNone) return {rows, at::ones_like(rows)};
  const at::Tensor total = rows.sum();
  if (reduction == kReductionSum) return {total, at::ones_like(rows)};
  const at::Tensor denom = row_weight.sum();
  const at::Tensor positive = denom > 0;
  const at::Tensor inv = at::where(positive, at::reciprocal(at::where(positive, denom, 1.0)), 0.0);
  return {total * inv, inv.expand_as(rows)};
}

}  // namespace hail_ext
