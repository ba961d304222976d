// The specification of the attention kernels: plain loops, float64, one query
// row at a time (its Tk scores materialized), one thread. The fast paths
// (attention_forward.cpp, attention_backward.cpp) are held to this and to
// NumPy. Masks, layout and dropout: attention.h and philox.h.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ssl_core/kernels.h"
#include "ssl_core/philox.h"

namespace ssl_core::cpu::reference {
namespace {

bool may_attend(const AttentionMask& m, int64_t Tq, int64_t Tk, int64_t b, int64_t h, int64_t i, int64_t j) {
  if (m.key_lengths && j >= m.key_lengths[b]) return false;
  if (m.mask && !m.mask[b * m.mask_strides[0] + h * m.mask_strides[1] + i * m.mask_strides[2] +
                        j * m.mask_strides[3]])
    return false;
  if (m.causal || m.prefix_lengths) {
    const bool below_diagonal = j <= i + (Tk - Tq);
    const bool in_prefix = m.prefix_lengths && j < m.prefix_lengths[b];
    if (!below_diagonal && !in_prefix) return false;
  }
  return true;
}

// The factor of weight (b, h, i, j) after dropout: 0 or 1 / (1 - p).
double dropout_factor(const AttentionOptions& o, int64_t b, int64_t h, int64_t i, int64_t j) {
  if (o.dropout_p <= 0) return 1.0;
  const uint32_t counter[4] = {static_cast<uint32_t>(j / 4), static_cast<uint32_t>(i),
                               static_cast<uint32_t>(h), static_cast<uint32_t>(b)};
  const uint32_t word = philox4x32(counter, o.seed).w[j % 4];
  return word >= dropout_threshold(o.dropout_p) ? 1.0 / (1.0 - o.dropout_p) : 0.0;
}

double dot(const float* a, const float* b, int64_t n) {
  double sum = 0;
  for (int64_t d = 0; d < n; ++d) sum += static_cast<double>(a[d]) * b[d];
  return sum;
}

const float* row(ConstHeadsView x, int64_t b, int64_t t, int64_t h) { return x.head(b, h) + t * x.seq_stride; }
float* row(HeadsView x, int64_t b, int64_t t, int64_t h) { return x.head(b, h) + t * x.seq_stride; }

// The probabilities p[j] of query (b, h, i) (0 where masked) and their
// log-sum-exp (+inf when no key may be attended).
double probabilities(ConstHeadsView q, ConstHeadsView k, const AttentionOptions& o, int64_t b, int64_t h,
                     int64_t i, std::vector<double>& p) {
  const int64_t Tk = k.seq;
  double max = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < Tk; ++j) {
    p[j] = -std::numeric_limits<double>::infinity();
    if (may_attend(o.mask, q.seq, Tk, b, h, i, j)) p[j] = o.scale * dot(row(q, b, i, h), row(k, b, j, h), q.dim);
    if (p[j] > max) max = p[j];
  }
  if (max == -std::numeric_limits<double>::infinity()) {
    for (int64_t j = 0; j < Tk; ++j) p[j] = 0;
    return std::numeric_limits<double>::infinity();
  }
  double sum = 0;
  for (int64_t j = 0; j < Tk; ++j) sum += p[j] = std::exp(p[j] - max);
  for (int64_t j = 0; j < Tk; ++j) p[j] /= sum;
  return max + std::log(sum);
}

}  // namespace

void attention_forward(HeadsView out, float* lse, ConstHeadsView q, ConstHeadsView k, ConstHeadsView v,
                       const AttentionOptions& options) {
  const int64_t B = q.batch, Tq = q.seq, H = q.heads, D = q.dim, Tk = k.seq;
  std::vector<double> p(Tk), o(D);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Tq; ++i) {
        lse[(b * H + h) * Tq + i] = static_cast<float>(probabilities(q, k, options, b, h, i, p));
        std::fill(o.begin(), o.end(), 0.0);
        for (int64_t j = 0; j < Tk; ++j) {
          const double weight = p[j] * dropout_factor(options, b, h, i, j);
          for (int64_t d = 0; d < D; ++d) o[d] += weight * row(v, b, j, h)[d];
        }
        for (int64_t d = 0; d < D; ++d) row(out, b, i, h)[d] = static_cast<float>(o[d]);
      }
}

// With P the probabilities, F the dropout factors and O = (P o F) V:
//   dV = (P o F)^T dO,  dP = (dO V^T) o F,  dS = P o (dP - rowsum(P o dP)),
//   dQ = scale dS K,  dK = scale dS^T Q.
// rowsum(P o dP) equals dO . O, which is what the fast path uses; here it is
// summed directly. The saved lse and out are not needed at this precision.
void attention_backward(HeadsView dq, HeadsView dk, HeadsView dv, ConstHeadsView dout, ConstHeadsView q,
                        ConstHeadsView k, ConstHeadsView v, ConstHeadsView, const float*,
                        const AttentionOptions& options) {
  const int64_t B = q.batch, Tq = q.seq, H = q.heads, D = q.dim, Tk = k.seq;
  std::vector<double> p(Tk), dp(Tk), dq_row(D), dk_acc(Tk * D), dv_acc(Tk * D);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      std::fill(dk_acc.begin(), dk_acc.end(), 0.0);
      std::fill(dv_acc.begin(), dv_acc.end(), 0.0);
      for (int64_t i = 0; i < Tq; ++i) {
        probabilities(q, k, options, b, h, i, p);
        const float* dout_i = row(dout, b, i, h);
        double weighted = 0;
        for (int64_t j = 0; j < Tk; ++j) {
          const double factor = dropout_factor(options, b, h, i, j);
          dp[j] = dot(dout_i, row(v, b, j, h), D) * factor;
          weighted += p[j] * dp[j];
          for (int64_t d = 0; d < D; ++d) dv_acc[j * D + d] += p[j] * factor * dout_i[d];
        }
        std::fill(dq_row.begin(), dq_row.end(), 0.0);
        for (int64_t j = 0; j < Tk; ++j) {
          const double ds = options.scale * p[j] * (dp[j] - weighted);
          for (int64_t d = 0; d < D; ++d) {
            dq_row[d] += ds * row(k, b, j, h)[d];
            dk_acc[j * D + d] += ds * row(q, b, i, h)[d];
          }
        }
        for (int64_t d = 0; d < D; ++d) row(dq, b, i, h)[d] = static_cast<float>(dq_row[d]);
      }
      for (int64_t j = 0; j < Tk; ++j)
        for (int64_t d = 0; d < D; ++d) {
          row(dk, b, j, h)[d] = static_cast<float>(dk_acc[j * D + d]);
          row(dv, b, j, h)[d] = static_cast<float>(dv_acc[j * D + d]);
        }
    }
}

}  // namespace ssl_core::cpu::reference
