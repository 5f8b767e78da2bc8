// Tile products from bfloat16 inputs through libtorch's batch-reduce GEMM micro-kernel.
#include "bf16_products.h"

#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace hail_ext::cpu {
namespace {

#ifdef CPUBLAS_BRGEMM_BF16BF16F32
constexpr bool kCompiled = true;
#else
constexpr bool kCompiled = false;
#endif

namespace blas = at::native::cpublas;
using bf16 = at::BFloat16;

constexpr int64_t kPanel = 64;        // the micro-kernel's widest N
constexpr int64_t kChunk = 64;        // rows of A per call in the gradient products
constexpr int64_t kPackItems = 4096;  // items packed at a time (a multiple of kPanel)
constexpr int64_t kSpan = 2048;       // items summed per call (even)

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Columns of panel j when `cols` columns are cut into panels of 64.
int64_t panel_width(int64_t cols, int64_t j) { return std::min(kPanel, cols - j * kPanel); }

// c [m, n] (row stride ldc) = a [m, kdim] (row stride lda) @ b [kdim, n] (packed) (+ c if add).
void product(int64_t m, int64_t n, int64_t kdim, const bf16* a, int64_t lda, const bf16* b,
             float* c, int64_t ldc, bool add) {
#ifdef CPUBLAS_BRGEMM_BF16BF16F32
  blas::brgemm(m, n, kdim, lda, n, ldc, add, a, b, c, /*is_vnni=*/true);
#else
  (void)m, (void)n, (void)kdim, (void)a, (void)lda, (void)b, (void)c, (void)ldc, (void)add;
  TORCH_CHECK(false, "hail_ext: bfloat16 micro-kernels are not in this libtorch");
#endif
}

// The micro-kernel's layout of a packed b [kdim, width] (row stride ldb, kdim even): rows in
// pairs, each pair's two values of a column side by side, [kdim / 2][width][2]. Written here for
// the per-tile dz, which is packed once per use; usable() checks it against blas::pack.
void pack_pairs(int64_t kdim, int64_t width, const bf16* b, int64_t ldb, bf16* out) {
  const auto* src = reinterpret_cast<const uint16_t*>(b);
  auto* dst = reinterpret_cast<uint16_t*>(out);
  for (int64_t r = 0; r < kdim; r += 2) {
    const uint16_t* row0 = src + r * ldb;
    const uint16_t* row1 = row0 + ldb;
    uint16_t* pair = dst + r * width;
    for (int64_t c = 0; c < width; ++c) {
      pair[2 * c] = row0[c];
      pair[2 * c + 1] = row1[c];
    }
  }
}

// blas::pack against pack_pairs in every way this file calls it: panels of 64, 48 and 16
// columns cut from a source whose rows are longer than the panel (some oneDNN versions step
// source rows by the panel width, not by the row stride). Values below 256 are exact in bfloat16.
bool pack_pairs_matches() {
  constexpr int64_t kRows = 6, kStride = 2 * kPanel;
  at::Tensor b = at::arange(kRows * kStride, at::kFloat).remainder(251).to(at::kBFloat16);
  const bf16* src = b.data_ptr<bf16>();
  constexpr int64_t kPanels[][2] = {{64, 64}, {48, 16}, {16, 32}};  // (width, first column)
  for (const auto& panel : kPanels) {
    const int64_t width = panel[0], column = panel[1];
    at::Tensor theirs = at::zeros({kRows * width}, b.options()), ours = at::zeros_like(theirs);
    blas::pack(kRows, width, kStride, width, at::kBFloat16, at::kBFloat16, src + column,
               theirs.data_ptr());
    pack_pairs(kRows, width, src + column, kStride, ours.data_ptr<bf16>());
    if (!at::equal(theirs, ours)) {
      return false;
    }
  }
  return true;
}

}  // namespace

bool Bf16Products::usable(int64_t dim) {
  // could_pack also follows torch.backends.mkldnn's switch, so it is asked on every call; the
  // layout check needs it and runs once.
  if (!kCompiled || dim < 1 || !at::native::cpublas::could_pack(at::kBFloat16)) {
    return false;
  }
  static const bool layout_matches = pack_pairs_matches();
  const char* env = std::getenv("HAIL_CPU_BF16_PRODUCTS");
  return layout_matches && !(env != nullptr && std::string(env) == "0");
}

Bf16Products::Bf16Products(const at::Tensor& hidden, const at::Tensor& item_weight) {
  const auto opts = hidden.options().dtype(at::kBFloat16);
  num_rows_ = hidden.size(1);
  dim_ = hidden.size(2);
  num_items_ = item_weight.size(-2);
  per_peer_ = item_weight.dim() == 3;
  dim_even_ = round_up(dim_, 2);
  dim_padded_ = round_up(dim_, 16);
  items_even_ = round_up(num_items_, 2);
  item_panels_ = (num_items_ + kPanel - 1) / kPanel;

  if (dim_even_ == dim_) {
    hidden_ = hidden.contiguous();
  } else {
    hidden_ = at::zeros({hidden.size(0), num_rows_, dim_even_}, opts);
    hidden_.narrow(2, 0, dim_).copy_(hidden);
  }
  weight_ = (per_peer_ ? item_weight : item_weight.unsqueeze(0)).contiguous();

  // Items as columns: W^T cut into [dim_even_, 64] panels, zero-padded. Packed in chunks of
  // items, so that no whole transposed copy of the table is ever held.
  logit_panels_ = at::empty({weight_.size(0), item_panels_, dim_even_ * kPanel}, opts);
  for_each_chunk(item_panels_ * kPanel, [&](int64_t t, int64_t i0, int64_t span) {
    const int64_t items = std::min(span, num_items_ - i0);
    at::Tensor wt = at::zeros({dim_even_, span}, opts);
    wt.narrow(0, 0, dim_).narrow(1, 0, items).copy_(weight_[t].narrow(0, i0, items).t());
    bf16* dst = logit_panels_[t].data_ptr<bf16>() + i0 * dim_even_;
    for (int64_t p = 0; p * kPanel < span; ++p) {
      blas::pack(dim_even_, kPanel, span, kPanel, at::kBFloat16, at::kBFloat16,
                 wt.data_ptr<bf16>() + p * kPanel, dst + p * dim_even_ * kPanel);
    }
  });
}

// Items as the reduced dimension: W zero-padded to [items_even_, dim_padded_], cut into panels
// of 64 columns, panel j at j * items_even_ * 64, packed in chunks of items (rows in pairs, so
// a chunk starting on an even item starts at i0 * width in its panel). Only the backward needs it.
void Bf16Products::pack_for_hidden_grad() {
  weight_panels_ = at::empty({weight_.size(0), items_even_ * dim_padded_}, hidden_.options());
  for_each_chunk(items_even_, [&](int64_t t, int64_t i0, int64_t span) {
    const int64_t items = std::min(span, num_items_ - i0);
    at::Tensor w = at::zeros({span, dim_padded_}, hidden_.options());
    w.narrow(0, 0, items).narrow(1, 0, dim_).copy_(weight_[t].narrow(0, i0, items));
    bf16* dst = weight_panels_[t].data_ptr<bf16>();
    for (int64_t j = 0; j * kPanel < dim_padded_; ++j) {
      const int64_t width = panel_width(dim_padded_, j);
      blas::pack(span, width, dim_padded_, width, at::kBFloat16, at::kBFloat16,
                 w.data_ptr<bf16>() + j * kPanel, dst + j * items_even_ * kPanel + i0 * width);
    }
  });
}

template <typename Fn>
void Bf16Products::for_each_chunk(int64_t total, Fn&& fn) const {
  const int64_t chunks = (total + kPackItems - 1) / kPackItems;
  for (int64_t t = 0; t < weight_.size(0); ++t) {
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        fn(t, c * kPackItems, std::min(kPackItems, total - c * kPackItems));
      }
    });
  }
}

void Bf16Products::logits(int64_t k, int64_t n0, int64_t nb, int64_t v0, int64_t vt,
                          float* out) const {
  const bf16* a = hidden_.data_ptr<bf16>() + (k * num_rows_ + n0) * dim_even_;
  const bf16* panels =
      logit_panels_.data_ptr<bf16>() + table(k) * item_panels_ * dim_even_ * kPanel;

  // Panels wholly inside the tile are written in place, the tile's ragged ends through a scratch.
  at::parallel_for(v0 / kPanel, (v0 + vt - 1) / kPanel + 1, 1, [&](int64_t p0, int64_t p1) {
    std::vector<float> scratch;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t lo = std::max(p * kPanel, v0), hi = std::min((p + 1) * kPanel, v0 + vt);
      const bf16* b = panels + p * dim_even_ * kPanel;
      if (hi - lo == kPanel) {
        product(nb, kPanel, dim_even_, a, dim_even_, b, out + (lo - v0), vt, false);
        continue;
      }
      scratch.resize(nb * kPanel);
      product(nb, kPanel, dim_even_, a, dim_even_, b, scratch.data(), kPanel, false);
      for (int64_t r = 0; r < nb; ++r) {
        std::memcpy(out + r * vt + (lo - v0), scratch.data() + r * kPanel + (lo - p * kPanel),
                    (hi - lo) * sizeof(float));
      }
    }
    blas::brgemm_release(true);
  });
}

void Bf16Products::zero_weight_grad() {
  weight_grad_blocks_ = at::zeros({weight_.size(0), item_panels_, dim_, kPanel}, at::kFloat);
}

at::Tensor Bf16Products::weight_grad(at::ScalarType dtype) const {
  const int64_t tables = weight_.size(0);
  at::Tensor out = at::empty({tables, item_panels_ * kPanel, dim_}, weight_.options().dtype(dtype));
  out.view({tables, item_panels_, kPanel, dim_}).copy_(weight_grad_blocks_.transpose(2, 3));
  out = out.narrow(1, 0, num_items_);
  return per_peer_ ? out.contiguous() : out[0];
}

void Bf16Products::add_grads(int64_t k, int64_t n0, int64_t nb, int64_t v0, int64_t vt,
                             const float* dz, float* grad_hidden) {
  if (!weight_panels_.defined()) pack_for_hidden_grad();
  const auto opts = hidden_.options();

  // dz in bfloat16 as [rows, cols]: from item v_a, the tile's first item rounded down to a whole
  // panel of 64 (so that dz's panels are the gradient's), rows rounded up to even and columns to
  // whole panels, zeros around. The product over items reads its first `items` columns.
  const int64_t off = v0 % kPanel, v_a = v0 - off, items = round_up(off + vt, 2);
  const int64_t rows = round_up(nb, 2), cols = round_up(off + vt, kPanel);
  if (dz_buffer_.numel() < rows * cols) dz_buffer_ = at::empty({rows * cols}, opts);
  at::Tensor dz_bf = dz_buffer_.narrow(0, 0, rows * cols).view({rows, cols});
  dz_bf.narrow(1, 0, off).zero_();
  dz_bf.narrow(0, 0, nb)
      .narrow(1, off, vt)
      .copy_(at::from_blob(const_cast<float*>(dz), {nb, vt}, opts.dtype(at::kFloat)));
  dz_bf.narrow(1, off + vt, cols - off - vt).zero_();
  dz_bf.narrow(0, nb, rows - nb).zero_();
  const bf16* a = dz_bf.data_ptr<bf16>();

  // grad_hidden [nb, d] += dz [nb, items] @ W [items, d], per 64-column panel of W and chunk of
  // rows, over the items kSpan at a time: the micro-kernel slows down fivefold when its
  // operand B (a panel of W over the whole sum) no longer fits the cache.
  const int64_t col_panels = (dim_padded_ + kPanel - 1) / kPanel;
  const int64_t row_chunks = (nb + kChunk - 1) / kChunk;
  const bf16* w_panels = weight_panels_[table(k)].data_ptr<bf16>();
  at::parallel_for(0, row_chunks * col_panels, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> scratch;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t r0 = i / col_panels * kChunk, m = std::min(kChunk, nb - r0);
      const int64_t j = i % col_panels, width = panel_width(dim_padded_, j);
      const int64_t real = std::min(width, dim_ - j * kPanel);
      const bf16* b = w_panels + j * items_even_ * kPanel + v_a * width;
      float* c = grad_hidden + r0 * dim_ + j * kPanel;
      // A panel narrower than its padded width goes through a scratch.
      const bool direct = real == width;
      if (!direct) scratch.assign(m * width, 0.0f);
      for (int64_t s0 = 0; s0 < items; s0 += kSpan) {
        const int64_t span = std::min(kSpan, items - s0);
        product(m, width, span, a + r0 * cols + s0, cols, b + s0 * width,
                direct ? c : scratch.data(), direct ? dim_ : width, true);
      }
      if (!direct) {
        for (int64_t r = 0; r < m; ++r) {
          for (int64_t q = 0; q < real; ++q) c[r * dim_ + q] += scratch[r * width + q];
        }
      }
    }
    blas::brgemm_release(true);
  });

  // The item table's gradient, panel by panel of 64 items: [d, 64] += H^T [d, rows] @ dz [rows,
  // 64], dz's panel packed here, so that dz is never transposed; H^T once per block. Each panel's
  // gradient is a contiguous block (weight_grad() puts them back in order).
  const bf16* ht = hidden_transposed(k, n0, nb);
  float* blocks = weight_grad_blocks_[table(k)].data_ptr<float>() + v_a * dim_;
  at::parallel_for(0, cols / kPanel, 1, [&](int64_t p0, int64_t p1) {
    std::vector<bf16> packed(rows * kPanel);
    for (int64_t p = p0; p < p1; ++p) {
      pack_pairs(rows, kPanel, a + p * kPanel, cols, packed.data());
      product(dim_, kPanel, rows, ht, rows, packed.data(), blocks + p * dim_ * kPanel, kPanel,
              true);
    }
    blas::brgemm_release(true);
  });
}

// hidden[k, n0 : n0 + nb]^T as [d, rows] (rows = nb rounded up to even, zero-padded), kept per
// peer while the block lasts: every item tile of the block reuses it.
const at::BFloat16* Bf16Products::hidden_transposed(int64_t k, int64_t n0, int64_t nb) {
  if (transposed_.empty()) transposed_.resize(hidden_.size(0));
  Transposed& cached = transposed_[k];
  const int64_t rows = round_up(nb, 2);
  if (cached.row0 != n0 || cached.rows != nb) {
    cached.values = at::zeros({dim_, rows}, hidden_.options());
    cached.values.narrow(1, 0, nb).copy_(hidden_[k].narrow(0, n0, nb).narrow(1, 0, dim_).t());
    cached.row0 = n0;
    cached.rows = nb;
  }
  return cached.values.data_ptr<bf16>();
}

}  // namespace hail_ext::cpu
