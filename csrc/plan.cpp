#include "plan.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace hail_ext {
namespace {

int64_t workspace_bytes(int64_t default_mb) {
  const char* env = std::getenv("HAIL_WORKSPACE_MB");
  const int64_t mb = env ? std::atoll(env) : default_mb;
  TORCH_CHECK_VALUE(mb > 0, "HAIL_WORKSPACE_MB must be a positive integer, got '", env, "'");
  return mb << 20;
}

bool forced_plan(int64_t num_rows, int64_t num_items, Plan& plan) {
  const char* env = std::getenv("HAIL_TILE_SHAPE");
  if (env == nullptr) return false;
  long long rows = 0, items = 0;
  TORCH_CHECK_VALUE(std::sscanf(env, "%lld,%lld", &rows, &items) == 2 && rows > 0 && items > 0,
                    "HAIL_TILE_SHAPE must be 'rows,items' with both > 0, got '", env, "'");
  plan = {std::min<int64_t>(rows, std::max<int64_t>(num_rows, 1)),
          std::min<int64_t>(items, num_items)};
  return true;
}

}  // namespace

Plan make_plan(const PlanLimits& limits, int64_t num_peers, int64_t num_rows, int64_t num_items,
               int64_t elt) {
  Plan plan{};
  if (forced_plan(num_rows, num_items, plan)) return plan;

  const int64_t budget = workspace_bytes(limits.workspace_mb);
  const int64_t rows_cap = std::max<int64_t>(num_rows, 1);
  const int64_t rows = budget / (num_peers * num_items * elt);
  if (rows >= limits.min_block_rows || rows >= rows_cap) {
    return {std::max<int64_t>(std::min({rows, limits.max_block_rows, rows_cap}), 1), num_items};
  }

  const int64_t block = std::min(limits.tiled_block_rows, rows_cap);
  const int64_t align = limits.tile_align;
  const int64_t tiled_budget = std::min(budget, limits.tiled_workspace_mb << 20);
  const int64_t items = tiled_budget / (num_peers * block * elt) / align * align;
  return {block, std::min(std::max(items, align), num_items)};
}

}  // namespace hail_ext
