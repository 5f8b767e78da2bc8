// How a loss call is cut into row blocks and item tiles, for every device.
#pragma once

#include <cstdint>

namespace hail_ext {

struct Plan {
  int64_t block_rows;  // rows of one block
  int64_t tile_items;  // items of one tile (all V when the catalogue fits the workspace)
};

// A device's preferences: its default workspace, and the block sizes below which its products
// get too thin.
struct PlanLimits {
  int64_t workspace_mb;        // default of HAIL_WORKSPACE_MB
  int64_t tiled_workspace_mb;  // at most this much when the items are tiled
  int64_t min_block_rows;      // fewer rows than this per whole-catalogue block: tile the items
  int64_t max_block_rows;
  int64_t tiled_block_rows;  // rows per block when the items are tiled
  int64_t tile_align;        // tile sizes are multiples of this
};

// The workspace holds one tile of logits for all peers, [K, block_rows, tile_items] of
// `elt`-byte numbers, within HAIL_WORKSPACE_MB (or the device default). Whole-catalogue blocks
// compute each logit once, so they get the whole budget; tiled blocks compute the logits again in
// each sweep whatever the tile size, so they take no more than tiled_workspace_mb. HAIL_TILE_SHAPE=
// "rows,items" forces the plan; the tests use it to reach every tiling path.
Plan make_plan(const PlanLimits& limits, int64_t num_peers, int64_t num_rows, int64_t num_items,
               int64_t elt);

}  // namespace hail_ext
