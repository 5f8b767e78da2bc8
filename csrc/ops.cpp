// Schemas of the operators. Kernels register per device (cpu/, cuda/); autograd and the fake
// (meta) implementations that torch.compile needs are registered from Python (hail_ext/_ops.py).
#include <torch/library.h>

TORCH_LIBRARY(hail_ext, m) {
  m.def(
      "med_forward(Tensor hidden, Tensor item_weight, Tensor target, Tensor? bias, "
      "Tensor? row_weight, int ignore_index, float alpha, float gamma, float beta, "
      "int reduction, bool compute_grad) -> (Tensor loss, Tensor ce, Tensor med, Tensor kept, "
      "Tensor saved, "
      "Tensor amax, Tensor grad_hidden, Tensor grad_item_weight, Tensor grad_bias)");
  m.def(
      "med_backward(Tensor grad_rows, Tensor hidden, Tensor item_weight, Tensor target, "
      "Tensor? bias, Tensor? row_weight, Tensor kept, Tensor saved, Tensor amax, "
      "int ignore_index, float alpha, float gamma) "
      "-> (Tensor grad_hidden, Tensor grad_item_weight, Tensor grad_bias)");
}
