// Tile products from bfloat16 inputs with float32 results, for CPUs whose oneDNN micro-kernels
// (the batch-reduce GEMM that libtorch exports as at::native::cpublas::brgemm) take bfloat16
// directly, which on x86-64 means AMX. Elsewhere the CPU loss converts bfloat16 inputs to float32
// and runs float32 BLAS products (med_loss_cpu.cpp).
//
// The logits come out exact to float32 accumulation, as on the float32 path. The two gradient
// products take dz rounded to bfloat16, as fused GPU losses do: a relative error of 2^-9 per
// element of dz, within the 1e-2 that docs/SPEC.md allows bfloat16.
//
// The micro-kernel multiplies A [M, K] (row-major) by B [K, N] packed in pairs along K, with N a
// multiple of 16 up to 64; so the item table is packed once per call into panels of 64 columns,
// in two layouts (items as columns for the logits, items as the reduced dimension for the
// gradient of hidden): together the size of the float32 copy that the other path makes.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace hail_ext::cpu {

class Bf16Products {
 public:
  // True when the micro-kernels take bfloat16 on this CPU (and torch.backends.mkldnn is on),
  // hidden has dim >= 1 columns and the environment variable HAIL_CPU_BF16_PRODUCTS is not "0".
  static bool usable(int64_t dim = 1);

  // hidden [K, N, d]; item_weight [V, d] (shared) or [K, V, d] (per peer); both bfloat16.
  Bf16Products(const at::Tensor& hidden, const at::Tensor& item_weight);

  // out [nb, vt] (row stride vt) = hidden[k, n0 : n0 + nb] @ weight(k)[v0 : v0 + vt]^T.
  void logits(int64_t k, int64_t n0, int64_t nb, int64_t v0, int64_t vt, float* out) const;

  // Zeroes the float32 gradient of item_weight that add_grads accumulates into, and returns it
  // (in `dtype`, [V, d] or [K, V, d], contiguous) once the sweeps are done.
  void zero_weight_grad();
  at::Tensor weight_grad(at::ScalarType dtype) const;

  // With dz [nb, vt] (row stride vt) of the same rows and items:
  //   grad_hidden [nb, d] (row stride d) += dz @ weight(k)[v0 : v0 + vt]
  //   grad of weight(k)[v0 : v0 + vt] += dz^T @ hidden[k, n0 : n0 + nb]
  void add_grads(int64_t k, int64_t n0, int64_t nb, int64_t v0, int64_t vt, const float* dz,
                 float* grad_hidden);

 private:
  int64_t table(int64_t k) const { return per_peer_ ? k : 0; }
  void pack_for_hidden_grad();
  // fn(t, i0, span) for each table t and chunk [i0, i0 + span) of `total` items (chunks of
  // kPackItems, in parallel).
  template <typename Fn>
  void for_each_chunk(int64_t total, Fn&& fn) const;
  const at::BFloat16* hidden_transposed(int64_t k, int64_t n0, int64_t nb);

  struct Transposed {
    int64_t row0 = -1, rows = 0;
    at::Tensor values;  // [d, rows rounded up to even]
  };

  int64_t num_rows_ = 0, num_items_ = 0, dim_ = 0;
  int64_t dim_even_ = 0;    // d rounded up to even: K of the logits product
  int64_t dim_padded_ = 0;  // d rounded up to 16: the columns of the gradient products
  int64_t items_even_ = 0;  // V rounded up to even: K of the gradient of hidden
  int64_t item_panels_ = 0;
  bool per_peer_ = false;
  at::Tensor hidden_;              // [K, N, dim_even_]
  at::Tensor weight_;              // [T, V, d], T = 1 or K, as given
  at::Tensor logit_panels_;        // per table and 64-item panel: [dim_even_, 64] packed
  at::Tensor weight_panels_;       // per table and 64-column panel: [items_even_, width] packed
  at::Tensor weight_grad_blocks_;  // [T, item panels, d, 64] float32: per panel, its transpose
  at::Tensor dz_buffer_;           // dz of one peer's tile in bfloat16
  std::vector<Transposed> transposed_;  // per peer: its hidden rows of the current block
};

}  // namespace hail_ext::cpu
