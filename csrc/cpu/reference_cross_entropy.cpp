// The specification of the fused linear + cross-entropy kernel
// (cross_entropy.h): plain loops in float64, one labelled row at a time with
// its V logits materialized, one thread. The fast path
// (linear_cross_entropy.cpp) is held to this and to NumPy.
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "ssl_core/kernels.h"

namespace ssl_core::cpu::reference {

CrossEntropyResult linear_cross_entropy(RowsView d_hidden, RowsView d_weight, float* d_bias, ConstRowsView hidden,
                                        ConstRowsView weight, const float* bias, const CrossEntropyLabels& labels,
                                        const CrossEntropyOptions& options) {
  const int64_t V = weight.rows, C = weight.cols;
  const bool grads = d_hidden.data != nullptr;
  const double eps = options.label_smoothing, scale = options.grad_scale;
  std::vector<double> dw, db;
  if (grads) {
    dw.assign(V * C, 0.0);
    db.assign(V, 0.0);
    for (int64_t r = 0; r < d_hidden.rows; ++r) std::memset(d_hidden.row(r), 0, C * sizeof(float));
  }
  CrossEntropyResult result;
  std::vector<double> z(V), dh(C);
  for (int64_t i = 0; i < labels.count; ++i) {
    const float* h = hidden.row(labels.rows[i]);
    const int64_t target = labels.targets[i];
    double top = -std::numeric_limits<double>::infinity(), zsum = 0;
    int64_t arg = 0;
    for (int64_t v = 0; v < V; ++v) {
      double dot = bias ? bias[v] : 0.0;
      for (int64_t c = 0; c < C; ++c) dot += static_cast<double>(h[c]) * weight.row(v)[c];
      z[v] = dot;
      zsum += dot;
      if (dot > top) top = dot, arg = v;
    }
    double sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(z[v] - top);
    const double lse = top + std::log(sum);
    result.loss_sum += lse - (1 - eps) * z[target] - eps * zsum / V;
    result.correct += arg == target;
    if (!grads) continue;
    std::fill(dh.begin(), dh.end(), 0.0);
    for (int64_t v = 0; v < V; ++v) {
      const double dz = (std::exp(z[v] - lse) - (v == target ? 1 - eps : 0.0) - eps / V) * scale;
      db[v] += dz;
      for (int64_t c = 0; c < C; ++c) {
        dh[c] += dz * weight.row(v)[c];
        dw[v * C + c] += dz * h[c];
      }
    }
    float* out = d_hidden.row(labels.rows[i]);
    for (int64_t c = 0; c < C; ++c) out[c] = static_cast<float>(dh[c]);
  }
  if (grads) {
    for (int64_t v = 0; v < V; ++v) {
      float* row = d_weight.row(v);
      for (int64_t c = 0; c < C; ++c) row[c] = static_cast<float>((options.accumulate ? row[c] : 0.0) + dw[v * C + c]);
      if (d_bias) d_bias[v] = static_cast<float>((options.accumulate ? d_bias[v] : 0.0) + db[v]);
    }
  }
  return result;
}

}  // namespace ssl_core::cpu::reference
