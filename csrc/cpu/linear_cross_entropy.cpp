// Fused linear layer + softmax cross-entropy: the loss of a masked-LM or LM
// head and its gradients (formulas in cross_entropy.h), without ever holding
// the logits of the whole batch.
//
// Design. The labelled rows are taken in chunks of R rows (R = 64..256, so
// that R x V logits take about kLogitBudgetBytes). A chunk's logits are
// computed once and kept, transposed (vocabulary x rows) so that each SIMD
// lane is one row and the softmax statistics need no horizontal reductions:
//   1. Z^T = W H^T + b, vocabulary blocks in parallel. Each block leaves, per
//      row, its max, sum of exp, first argmax and sum of logits; these merge
//      in block order into the log-sum-exp, the loss and the accuracy.
//   2. (gradients) dZ^T overwrites Z^T block by block, in parallel; the
//      thread that owns a block also owns its rows of d_bias and of
//      d_weight (+)= dZ^T H, so no two threads write the same gradient.
//   3. d_hidden = dZ W, in parallel over column strips of C.
// The gradients thus cost two more products the size of the forward, as in
// a framework's backward, and no logit is computed twice. Keeping R x V logits
// (15.6 MB at R = 128 and BERT's V) instead of recomputing them, as Cut
// Cross-Entropy (Wijmans et al., 2024) does on GPUs, saves a fourth product:
// a third more arithmetic for an op that is bound by arithmetic here. Every
// sum runs in an order fixed by the shapes, so results are identical for any
// thread count.
//
// The products use the register tiles of gemm_tile.h on panels packed so that
// each tile's B operand is contiguous (a strided B walked a few L1 sets only).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "gemm_tile.h"
#include "ssl_core/kernels.h"
#include "ssl_core/runtime.h"
#include "ssl_core/simd_math.h"

namespace ssl_core::cpu::SSL_CORE_ISA {
namespace {

constexpr int64_t kStrip = kTileVectors * kWidth;  // columns one register tile spans
constexpr int64_t kVocabBlock = 192;               // vocabulary rows per parallel task
constexpr int64_t kDepthBlock = 128;               // depth of one packed B panel (fits L1)
constexpr int64_t kLogitBudgetBytes = int64_t{16} << 20;
constexpr int64_t kMinChunkRows = 64, kMaxChunkRows = 256;
constexpr int64_t kMinWorkPerThread = int64_t{1} << 22;  // multiply-adds

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Rows per chunk: as many as the logit budget allows, the chunks balanced.
int64_t chunk_rows(int64_t V, int64_t labelled) {
  const int64_t most = std::clamp(kLogitBudgetBytes / (V * 4) / 64 * 64, kMinChunkRows, kMaxChunkRows);
  return ceil_div(labelled, ceil_div(labelled, most));
}

// Everything one call shares between its threads.
struct Problem {
  ConstRowsView hidden, weight;
  const float* bias;
  CrossEntropyLabels labels;
  CrossEntropyOptions options;
  RowsView d_hidden, d_weight;
  float* d_bias;
  int64_t V, C, Cv;  // Cv: C rounded up to whole vectors
  bool grads;
};

// One chunk's buffers, sized for the largest chunk; `lanes` (the chunk's rows
// rounded up to whole strips) and `ldz` are set by start() for each chunk.
struct ChunkBuffers {
  int64_t C, lanes, ldz, blocks;
  std::vector<float> zt;        // (V, ldz): logits, then their gradients, transposed
  std::vector<float> ht;        // lanes / kStrip panels of (C, kStrip): H^T, B of step 1
  std::vector<float> hc;        // Cv / kStrip panels of (lanes, kStrip): H, B of step 2
  std::vector<float> dh;        // (lanes, Cv): d_hidden rows of the chunk
  std::vector<float> block_max, block_sum, block_best, block_arg, block_zsum;  // (blocks, lanes)
  std::vector<float> label_logit, lse, lane_scale, lane_smooth;               // (lanes,)

  ChunkBuffers(const Problem& p, int64_t capacity) : C(p.C) {
    start(capacity);
    blocks = ceil_div(p.V, kVocabBlock);
    zt.resize(p.V * (lanes + 16));  // the largest ldz start() can choose
    ht.resize(p.C * lanes);
    hc.resize(round_up(p.Cv, kStrip) * lanes);
    if (p.grads) dh.resize(lanes * p.Cv);
    for (auto* v : {&block_max, &block_sum, &block_best, &block_arg, &block_zsum}) v->resize(blocks * lanes);
    for (auto* v : {&label_logit, &lse, &lane_scale, &lane_smooth}) v->resize(lanes);
  }
  void start(int64_t rows) {
    lanes = round_up(rows, kStrip);
    ldz = lanes / 16 % 2 ? lanes : lanes + 16;  // an odd number of 64-byte lines: every L1 set in use
  }
  float* ht_panel(int64_t strip) { return ht.data() + strip * C * kStrip; }
  float* hc_panel(int64_t strip) { return hc.data() + strip * lanes * kStrip; }
};

// Gathers the chunk's rows of hidden into both packed layouts, zero-padded.
void pack_chunk(const Problem& p, ChunkBuffers& cb, int64_t first, int64_t rows) {
  const int64_t C = p.C, strips = ceil_div(p.Cv, kStrip);
#pragma omp for schedule(static)
  for (int64_t r = 0; r < cb.lanes; ++r) {
    const float* h = r < rows ? p.hidden.row(p.labels.rows[first + r]) : nullptr;
    float* ht = cb.ht_panel(r / kStrip) + r % kStrip;
    for (int64_t c = 0; c < C; ++c) ht[c * kStrip] = h ? h[c] : 0.0f;
    for (int64_t s = 0; s < strips; ++s) {
      float* hc = cb.hc_panel(s) + r * kStrip;
      const int64_t c0 = s * kStrip, n = h ? std::clamp<int64_t>(C - c0, 0, kStrip) : 0;
      if (n) std::memcpy(hc, h + c0, n * sizeof(float));
      std::fill(hc + n, hc + kStrip, 0.0f);
    }
  }
}

// Step 1 for vocabulary rows [v0, v0 + n): logits, then per-row statistics.
void logits_block(const Problem& p, ChunkBuffers& cb, int64_t block, int64_t first, int64_t rows) {
  const int64_t v0 = block * kVocabBlock, n = std::min(kVocabBlock, p.V - v0), ldz = cb.ldz;
  float* zt = cb.zt.data() + v0 * ldz;
  for (int64_t k0 = 0; k0 < p.C; k0 += kDepthBlock) {
    const int64_t depth = std::min(kDepthBlock, p.C - k0);
    const StridedA a{p.weight.row(v0) + k0, p.weight.row_stride, 1};
    for (int64_t s = 0; s < cb.lanes / kStrip; ++s) {
      const float* b = cb.ht_panel(s) + k0 * kStrip;
      if (k0 == 0) gemm<Update::overwrite, 0, 1>(n, kStrip, depth, a, b, kStrip, zt + s * kStrip, ldz);
      else gemm<Update::accumulate, 0, 1>(n, kStrip, depth, a, b, kStrip, zt + s * kStrip, ldz);
    }
  }
  const float* bias = p.bias ? p.bias + v0 : nullptr;
  const int64_t at = block * cb.lanes;
  for (int64_t j = 0; j < cb.lanes; j += kWidth) {
    Vec best = splat(-std::numeric_limits<float>::infinity()), arg = splat(0.0f), zsum = splat(0.0f);
    for (int64_t v = 0; v < n; ++v) {
      Vec z = load(zt + v * ldz + j);
      if (bias) {
        z = z + splat(bias[v]);
        store(zt + v * ldz + j, z);
      }
      const Mask better = greater(z, best);  // strictly: the first largest wins
      best = select(better, z, best);
      arg = select(better, splat(static_cast<float>(v0 + v)), arg);
      zsum = zsum + z;
    }
    Vec sum = splat(0.0f);
    for (int64_t v = 0; v < n; ++v) sum = sum + exp(load(zt + v * ldz + j) - best);
    store(cb.block_max.data() + at + j, best);
    store(cb.block_sum.data() + at + j, sum);
    store(cb.block_arg.data() + at + j, arg);
    store(cb.block_zsum.data() + at + j, zsum);
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = p.labels.targets[first + r];
    if (t >= v0 && t < v0 + n) cb.label_logit[r] = zt[(t - v0) * ldz + r];
  }
}

// Merges the blocks' statistics of each row, in block order; the chunk's
// contribution to the loss sum and the accuracy count.
CrossEntropyResult merge_blocks(const Problem& p, ChunkBuffers& cb, int64_t first, int64_t rows) {
  CrossEntropyResult result;
  const double eps = p.options.label_smoothing;
  for (int64_t r = 0; r < cb.lanes; ++r) {
    if (r >= rows) {  // padding lanes: zero gradient
      cb.lse[r] = std::numeric_limits<float>::infinity();
      cb.lane_scale[r] = cb.lane_smooth[r] = 0.0f;
      continue;
    }
    double top = -std::numeric_limits<double>::infinity(), zsum = 0;
    float best = -std::numeric_limits<float>::infinity(), arg = 0;
    for (int64_t b = 0; b < cb.blocks; ++b) {
      const int64_t i = b * cb.lanes + r;
      top = std::max<double>(top, cb.block_max[i]);
      zsum += cb.block_zsum[i];
      if (cb.block_max[i] > best) best = cb.block_max[i], arg = cb.block_arg[i];
    }
    double sum = 0;
    for (int64_t b = 0; b < cb.blocks; ++b) {
      const int64_t i = b * cb.lanes + r;
      sum += cb.block_sum[i] * std::exp(cb.block_max[i] - top);
    }
    const double lse = top + std::log(sum);
    cb.lse[r] = static_cast<float>(lse);
    cb.lane_scale[r] = p.options.grad_scale;
    cb.lane_smooth[r] = static_cast<float>(eps / p.V * p.options.grad_scale);
    result.loss_sum += lse - (1 - eps) * cb.label_logit[r] - eps * zsum / p.V;
    result.correct += static_cast<int64_t>(arg) == p.labels.targets[first + r];
  }
  return result;
}

// Step 2 for vocabulary block `block`: dZ^T in place of Z^T, then its rows of
// d_bias and d_weight.
void gradient_block(const Problem& p, ChunkBuffers& cb, int64_t block, int64_t first, int64_t rows, bool add) {
  const int64_t v0 = block * kVocabBlock, n = std::min(kVocabBlock, p.V - v0), ldz = cb.ldz;
  float* zt = cb.zt.data() + v0 * ldz;
  for (int64_t v = 0; v < n; ++v) {
    Vec row_sum = splat(0.0f);
    for (int64_t j = 0; j < cb.lanes; j += kWidth) {
      const Vec p_scaled = exp(load(zt + v * ldz + j) - load(cb.lse.data() + j)) * load(cb.lane_scale.data() + j);
      const Vec dz = p_scaled - load(cb.lane_smooth.data() + j);
      store(zt + v * ldz + j, dz);
      row_sum = row_sum + dz;
    }
    if (p.d_bias) p.d_bias[v0 + v] = (add ? p.d_bias[v0 + v] : 0.0f) + reduce_add(row_sum);
  }
  const float hit = (1.0f - p.options.label_smoothing) * p.options.grad_scale;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = p.labels.targets[first + r];
    if (t < v0 || t >= v0 + n) continue;
    zt[(t - v0) * ldz + r] -= hit;
    if (p.d_bias) p.d_bias[t] -= hit;
  }
  // d_weight rows: (n, C) (+)= dZ^T (n, rows) . H (rows, C); a column tail
  // narrower than a vector goes through a small buffer.
  const StridedA a{zt, ldz, 1};
  float* dw = p.d_weight.row(v0);
  const int64_t ldw = p.d_weight.row_stride, whole = p.C / kWidth * kWidth;
  for (int64_t c0 = 0; c0 < whole; c0 += kStrip) {
    const int64_t cols = std::min(kStrip, whole - c0);
    const float* b = cb.hc_panel(c0 / kStrip);
    if (add) gemm<Update::accumulate, 0, 1>(n, cols, rows, a, b, kStrip, dw + c0, ldw);
    else gemm<Update::overwrite, 0, 1>(n, cols, rows, a, b, kStrip, dw + c0, ldw);
  }
  if (whole < p.C) {
    alignas(64) float tail[kVocabBlock * kWidth];
    gemm<Update::overwrite, 0, 1>(n, kWidth, rows, a, cb.hc_panel(whole / kStrip) + whole % kStrip, kStrip, tail,
                                  kWidth);
    for (int64_t v = 0; v < n; ++v)
      for (int64_t c = whole; c < p.C; ++c) dw[v * ldw + c] = (add ? dw[v * ldw + c] : 0.0f) + tail[v * kWidth + c - whole];
  }
}

// Step 3 for column strips [strip_begin, strip_end) of C: dh = dZ W over the
// whole vocabulary, kDepthBlock rows of W at a time, packed per strip.
void hidden_gradient(const Problem& p, ChunkBuffers& cb, int64_t rows, int64_t strip_begin, int64_t strip_end,
                     float* panels) {
  const int64_t strips = strip_end - strip_begin;
  for (int64_t k0 = 0; k0 < p.V; k0 += kDepthBlock) {
    const int64_t depth = std::min(kDepthBlock, p.V - k0);
    for (int64_t k = 0; k < depth; ++k) {
      const float* w = p.weight.row(k0 + k);
      for (int64_t s = 0; s < strips; ++s) {
        float* panel = panels + (s * kDepthBlock + k) * kStrip;
        const int64_t c0 = (strip_begin + s) * kStrip, n = std::clamp<int64_t>(p.C - c0, 0, kStrip);
        std::memcpy(panel, w + c0, n * sizeof(float));
        std::fill(panel + n, panel + kStrip, 0.0f);
      }
    }
    const StridedA a{cb.zt.data() + k0 * cb.ldz, 1, cb.ldz};
    for (int64_t s = 0; s < strips; ++s) {
      const int64_t c0 = (strip_begin + s) * kStrip, cols = std::min(kStrip, p.Cv - c0);
      const float* b = panels + s * kDepthBlock * kStrip;
      float* c = cb.dh.data() + c0;
      if (k0 == 0) gemm<Update::overwrite, 1, 0>(rows, cols, depth, a, b, kStrip, c, p.Cv);
      else gemm<Update::accumulate, 1, 0>(rows, cols, depth, a, b, kStrip, c, p.Cv);
    }
  }
}

void zero_unlabelled_rows(const Problem& p) {
  const int64_t N = p.d_hidden.rows, M = p.labels.count;
  std::vector<int64_t> gaps;  // [start, end) runs of unlabelled rows
  int64_t next = 0;
  for (int64_t i = 0; i <= M; ++i) {
    const int64_t row = i < M ? p.labels.rows[i] : N;
    if (row > next) gaps.insert(gaps.end(), {next, row});
    next = row + 1;
  }
#pragma omp parallel for num_threads(threads_for(N * p.C, int64_t{1} << 20)) schedule(static)
  for (int64_t g = 0; g < static_cast<int64_t>(gaps.size()) / 2; ++g)
    for (int64_t r = gaps[2 * g]; r < gaps[2 * g + 1]; ++r)
      std::memset(p.d_hidden.row(r), 0, p.C * sizeof(float));
}

}  // namespace

CrossEntropyResult linear_cross_entropy(RowsView d_hidden, RowsView d_weight, float* d_bias, ConstRowsView hidden,
                                        ConstRowsView weight, const float* bias, const CrossEntropyLabels& labels,
                                        const CrossEntropyOptions& options) {
  Problem p{hidden, weight, bias, labels, options, d_hidden, d_weight, d_bias,
            weight.rows, weight.cols, round_up(weight.cols, kWidth), d_hidden.data != nullptr};
  CrossEntropyResult total;
  if (p.grads) zero_unlabelled_rows(p);
  if (labels.count == 0 || p.V == 0) {
    if (p.grads && !options.accumulate) {
      for (int64_t v = 0; v < p.V; ++v) std::memset(d_weight.row(v), 0, p.C * sizeof(float));
      if (d_bias) std::memset(d_bias, 0, p.V * sizeof(float));
    }
    return total;
  }
  const int64_t R = chunk_rows(p.V, labels.count);
  ChunkBuffers cb(p, R);
  const int64_t c_strips = ceil_div(p.Cv, kStrip);
  const int threads = std::min(threads_for(cb.blocks, 2), threads_for(labels.count * p.V * p.C, kMinWorkPerThread));
  std::vector<float> panels(p.grads ? threads * c_strips * kDepthBlock * kStrip : 0);
  for (int64_t first = 0; first < labels.count; first += R) {
    const int64_t rows = std::min(R, labels.count - first);
    cb.start(rows);
    const bool add = options.accumulate || first > 0;
#pragma omp parallel num_threads(threads)
    {
      pack_chunk(p, cb, first, rows);  // ends in the barrier of its omp for
#pragma omp for schedule(static)
      for (int64_t b = 0; b < cb.blocks; ++b) logits_block(p, cb, b, first, rows);
#pragma omp single
      {
        const CrossEntropyResult chunk = merge_blocks(p, cb, first, rows);
        total.loss_sum += chunk.loss_sum;
        total.correct += chunk.correct;
      }
      if (p.grads) {
#pragma omp for schedule(static)
        for (int64_t b = 0; b < cb.blocks; ++b) gradient_block(p, cb, b, first, rows, add);
        const int t = thread_index(), n = threads_in_region();
        const int64_t begin = c_strips * t / n, end = c_strips * (t + 1) / n;
        hidden_gradient(p, cb, rows, begin, end, panels.data() + t * c_strips * kDepthBlock * kStrip);
#pragma omp barrier
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r)
          std::memcpy(p.d_hidden.row(p.labels.rows[first + r]), cb.dh.data() + r * p.Cv, p.C * sizeof(float));
      }
    }
  }
  return total;
}

}  // namespace ssl_core::cpu::SSL_CORE_ISA
