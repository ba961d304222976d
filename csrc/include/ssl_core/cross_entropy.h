// Arguments of the fused linear + cross-entropy kernels
// (csrc/cpu/linear_cross_entropy.cpp), the loss of masked-LM and LM heads.
//
// For each labelled row i of hidden (N, C), with target t_i in [0, V):
//   z_i    = W h_i + b                                  (V logits)
//   loss_i = lse(z_i) - (1 - eps) z_i[t_i] - eps mean(z_i)
// (cross-entropy against (1 - eps) onehot(t_i) + eps / V, label smoothing as
// torch.nn.functional.cross_entropy defines it) and, when gradients are asked
// for, with dz_i = (softmax(z_i) - (1 - eps) onehot(t_i) - eps / V) * grad_scale:
//   d_hidden[i] = dz_i W,   d_weight (+)= sum_i dz_i h_i^T,   d_bias (+)= sum_i dz_i.
#pragma once

#include <cstdint>

namespace ssl_core {

struct CrossEntropyLabels {
  const int64_t* rows = nullptr;     // (count,) strictly ascending rows of hidden that carry a label
  const int64_t* targets = nullptr;  // (count,) their classes, in [0, V)
  int64_t count = 0;
};

struct CrossEntropyOptions {
  float label_smoothing = 0.0f;  // eps in [0, 1]
  float grad_scale = 1.0f;       // 1 / count for the mean loss, 1 for the sum
  bool accumulate = false;       // d_weight and d_bias += instead of =
};

struct CrossEntropyResult {
  double loss_sum = 0;    // sum of loss_i over the labelled rows
  int64_t correct = 0;    // labelled rows whose first largest logit is the target
};

}  // namespace ssl_core
