// Argument checks of the operators, for callers that reach them without hail_ext.med_loss.
#include <cmath>

#include "med_loss.h"

namespace hail_ext {

void check_args(const at::Tensor& hidden, const at::Tensor& item_weight, const at::Tensor& target,
                const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& row_weight,
                double alpha, double gamma, double beta, int64_t reduction) {
  TORCH_CHECK_VALUE(hidden.dim() == 3 && hidden.size(0) >= 1,
                    "hidden must be [K, N, d] with K >= 1, got ", hidden.sizes());
  const int64_t num_peers = hidden.size(0), num_rows = hidden.size(1), dim = hidden.size(2);
  const auto dtype = hidden.scalar_type();
  TORCH_CHECK_VALUE(
      dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
      "hidden must be float16, bfloat16, float32 or float64, got ", dtype);

  TORCH_CHECK_VALUE(
      item_weight.dim() == 2 || (item_weight.dim() == 3 && item_weight.size(0) == num_peers),
      "item_weight must be [V, d] or [K, V, d] with K = ", num_peers, ", got ",
      item_weight.sizes());
  TORCH_CHECK_VALUE(item_weight.size(-1) == dim, "item_weight ", item_weight.sizes(),
                    " and hidden ", hidden.sizes(), " disagree on d");
  const int64_t num_items = item_weight.size(-2);
  TORCH_CHECK_VALUE(num_items >= 1, "item_weight holds an empty catalogue (V = 0)");
  TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == num_rows,
                    "target must be [N] with N = ", num_rows, ", got ", target.sizes());
  TORCH_CHECK_VALUE(target.scalar_type() == at::kLong, "target must be int64, got ",
                    target.scalar_type());

  if (bias.has_value()) {
    const bool shared = bias->dim() == 1 && bias->size(0) == num_items;
    const bool per_peer =
        bias->dim() == 2 && bias->size(0) == num_peers && bias->size(1) == num_items;
    TORCH_CHECK_VALUE(shared || per_peer, "bias must be [V] or [K, V] with K = ", num_peers,
                      ", V = ", num_items, ", got ", bias->sizes());
    TORCH_CHECK_VALUE(bias->scalar_type() == dtype, "bias has dtype ", bias->scalar_type(),
                      " but hidden has ", dtype);
  }
  if (row_weight.has_value()) {
    TORCH_CHECK_VALUE(row_weight->dim() == 1 && row_weight->size(0) == num_rows,
                      "row_weight must be [N] with N = ", num_rows, ", got ", row_weight->sizes());
    TORCH_CHECK_VALUE(row_weight->is_floating_point(), "row_weight must be floating, got ",
                      row_weight->scalar_type());
  }
  TORCH_CHECK_VALUE(item_weight.scalar_type() == dtype, "item_weight has dtype ",
                    item_weight.scalar_type(), " but hidden has ", dtype);

  for (const at::Tensor* t : {&item_weight, &target}) {
    TORCH_CHECK_VALUE(t->device() == hidden.device(), "all inputs must be on ", hidden.device(),
                      ", found one on ", t->device());
  }
  for (const auto* t : {&bias, &row_weight}) {
    TORCH_CHECK_VALUE(!t->has_value() || (*t)->device() == hidden.device(),
                      "all inputs must be on ", hidden.device(), ", found one on ", (*t)->device());
  }

  TORCH_CHECK_VALUE(std::isfinite(alpha) && alpha >= 0.0 && alpha <= 1.0,
                    "alpha must lie in [0, 1], got ", alpha);
  TORCH_CHECK_VALUE(std::isfinite(gamma) && gamma > 0.0, "gamma must be > 0, got ", gamma);
  TORCH_CHECK_VALUE(std::isfinite(beta) && beta >= 0.0 && beta < 1.0,
                    "beta must lie in [0, 1), got ", beta);
  TORCH_CHECK_VALUE(
      reduction == kReductionNone || reduction == kReductionMean || reduction == kReductionSum,
      "reduction must be 0 (none), 1 (mean) or 2 (sum), got ", reduction);
}

}  // namespace hail_ext
