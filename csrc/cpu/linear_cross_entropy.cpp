// Fused linear layer + softmax cross-entropy: the loss of a masked-LM or LM
// head and its gradients (formulas in cross_entropy.h), without ever holding
// the logits of the whole batch.
//
// Design. The labelled rows are taken in chunks of R = 64..256 rows, R·V
// logits being at most 16 MB or 1/16 of the batch's M·V (chunk_rows). A
// chunk's logits are computed once and kept, transposed (vocabulary x rows)
// so that each SIMD lane is one row and the softmax statistics need no
// horizontal reductions:
//   1. Z^T = W H^T + b, vocabulary blocks in parallel. Each block leaves, per
//      row, its max, sum of exp, first argmax and sum of logits; these merge
//      in block order into the log-sum-exp, the loss and the accuracy.
//   2. (gradients) dZ^T overwrites Z^T block by block, in parallel; the
//      thread that owns a block also owns its rows of d_bias and of
//      d_weight (+)= dZ^T H, so no two threads write the same gradient.
//   3. d_hidden = dZ W, in parallel over column strips of C.
// The gradients thus cost two more products the size of the forward, as in
// a framework's backward, and no logit is computed twice. Keeping R·V logits
// instead of recomputing them, as Cut Cross-Entropy (Wijmans et al., 2024)
// does on GPUs, saves a fourth product: a third more arithmetic for an op
// that is bound by arithmetic here. Larger chunks read W and d_weight fewer
// times: at GPT-2's shape, R = 256 instead of 64 took 6.9 s instead of 8.1.
// Every sum runs in an order fixed by the shapes, so results are identical
// for any thread count.
//
// The products use the register tiles of gemm_tile.h. Their B operands are
// packed into contiguous panels (a B read in place, rows 3 KB apart, used a
// few L1 sets only), and so is step 3's A; steps 1 and 2 read A in place,
// rows of W and of dZ^T. These choices were timed on the BERT shape of
// benchmarks/bench_loss.py.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "gemm_tile.h"
#include "ssl_core/kernels.h"
#include "ssl_core/runtime.h"
#include "ssl_core/simd_math.h"

namespace ssl_core::cpu::SSL_CORE_ISA {
namespace {

constexpr int64_t kStrip = kTileVectors * kWidth;  // columns one register tile spans
constexpr int64_t kVocabBlock = 192;               // vocabulary rows per parallel task
constexpr int64_t kDepthBlock = 128;               // depth of one packed B panel (fits L1)
// A chunk's logits take at most 1/kLogitFraction of what the batch's would,
// or kMinLogitBytes: frameworks hold two or three copies of all of them.
constexpr int64_t kLogitFraction = 16, kMinLogitBytes = int64_t{16} << 20;
constexpr int64_t kMinChunkRows = 64, kMaxChunkRows = 256;
constexpr int64_t kMinWorkPerThread = int64_t{1} << 22;  // multiply-adds

// Rows per chunk: as many as fit the logit budget (larger chunks read W and
// d_weight fewer times), the chunks balanced.
int64_t chunk_rows(int64_t V, int64_t labelled) {
  const int64_t budget = std::max(kMinLogitBytes, labelled * V * 4 / kLogitFraction);
  const int64_t most = std::clamp(budget / (V * 4) / 64 * 64, kMinChunkRows, kMaxChunkRows);
  return std::min(most, round_up(ceil_div(labelled, ceil_div(labelled, most)), kStrip));  // no lane wasted but in the last
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

// One chunk's buffers (a Carver layout), sized for the largest chunk;
// `lanes` (the chunk's rows rounded up to whole strips) and `ldz` are set by
// start() for each chunk.
struct ChunkBuffers {
  int64_t C, lanes, ldz, blocks;
  float* zt;  // (V, ldz): logits, then their gradients, transposed
  float* ht;  // lanes / kStrip panels of (C, kStrip): H^T, B of step 1
  float* hc;  // Cv / kStrip panels of (lanes, kStrip): H, B of step 2
  float* dh;  // (lanes, Cv): d_hidden rows of the chunk
  // (blocks, lanes): each vocabulary block's max logit of each row, sum of
  // exp(z - max), first argmax (a float: exact below 2^24) and sum of logits.
  float *block_max, *block_sum, *block_arg, *block_zsum;
  // (lanes,): each row's logit of its target, max logit and log of its sum of
  // exp(z - max) (kept apart: at logits of 1e4, a float32 log-sum-exp would
  // be off by 5e-4 and the probabilities with it), and gradient weights.
  float *label_logit, *row_max, *log_sum, *lane_scale, *lane_smooth;

  ChunkBuffers(Carver& carver, const Problem& p, int64_t capacity) : C(p.C) {
    start(capacity);
    blocks = ceil_div(p.V, kVocabBlock);
    zt = carver.take(p.V * (lanes + 16));  // the largest ldz start() can choose
    ht = carver.take(p.C * lanes);
    hc = carver.take(round_up(p.Cv, kStrip) * lanes);
    dh = carver.take(p.grads ? lanes * p.Cv : 0);
    for (float** a : {&block_max, &block_sum, &block_arg, &block_zsum}) *a = carver.take(blocks * lanes);
    for (float** a : {&label_logit, &row_max, &log_sum, &lane_scale, &lane_smooth}) *a = carver.take(lanes);
  }
  void start(int64_t rows) {
    lanes = round_up(rows, kStrip);
    ldz = lanes / 16 % 2 ? lanes : lanes + 16;  // an odd number of 64-byte lines: every L1 set in use
  }
  float* ht_panel(int64_t strip) const { return ht + strip * C * kStrip; }
  float* hc_panel(int64_t strip) const { return hc + strip * lanes * kStrip; }
};

// Copies columns [strip_begin, strip_end) * kStrip of one row of n floats,
// zero-padded, into strips `step` floats apart.
void pack_row_strips(float* dst, int64_t step, const float* row, int64_t n, int64_t strip_begin,
                     int64_t strip_end) {
  for (int64_t s = strip_begin; s < strip_end; ++s, dst += step) {
    const int64_t c0 = s * kStrip;
    if (c0 + kStrip <= n) {
#pragma GCC unroll 4
      for (int64_t c = 0; c < kStrip; c += kWidth) store(dst + c, load(row + c0 + c));
    } else {
      for (int64_t c = 0; c < kStrip; c += kWidth)
        store(dst + c, load(row + c0 + c, static_cast<int>(std::clamp<int64_t>(n - c0 - c, 0, kWidth))));
    }
  }
}

// Gathers the chunk's rows of hidden into both packed layouts, zero-padded.
void pack_chunk(const Problem& p, const ChunkBuffers& cb, int64_t first, int64_t rows) {
  const int64_t C = p.C, strips = ceil_div(p.Cv, kStrip);
#pragma omp for schedule(static)
  for (int64_t r = 0; r < cb.lanes; ++r) {
    const float* h = r < rows ? p.hidden.row(p.labels.rows[first + r]) : nullptr;
    float* ht = cb.ht_panel(r / kStrip) + r % kStrip;
    for (int64_t c = 0; c < C; ++c) ht[c * kStrip] = h ? h[c] : 0.0f;
    float* hc = cb.hc_panel(0) + r * kStrip;
    if (h) {
      pack_row_strips(hc, cb.lanes * kStrip, h, C, 0, strips);
    } else {
      for (int64_t s = 0; s < strips; ++s) std::memset(hc + s * cb.lanes * kStrip, 0, kStrip * sizeof(float));
    }
  }
}

// Step 1 for vocabulary rows [v0, v0 + n): logits, then per-row statistics.
void logits_block(const Problem& p, const ChunkBuffers& cb, int64_t block, int64_t first, int64_t rows) {
  const int64_t v0 = block * kVocabBlock, n = std::min(kVocabBlock, p.V - v0), ldz = cb.ldz;
  float* zt = cb.zt + v0 * ldz;
  // A few rows of W at a time against every strip of H^T, over the whole
  // depth: each row of W is read once, in order (measured faster than
  // blocking the depth so the B panel stays in L1).
  for (int64_t v = 0; v < n; v += kTileRows) {
    const int64_t tile = std::min<int64_t>(kTileRows, n - v);
    const StridedA a{p.weight.row(v0 + v), p.weight.row_stride, 1};
    for (int64_t s = 0; s < cb.lanes / kStrip; ++s)
      gemm<Update::overwrite, 0, 1>(tile, kStrip, p.C, a, cb.ht_panel(s), kStrip, zt + v * ldz + s * kStrip, ldz);
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
    store(cb.block_max + at + j, best);
    store(cb.block_sum + at + j, sum);
    store(cb.block_arg + at + j, arg);
    store(cb.block_zsum + at + j, zsum);
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = p.labels.targets[first + r];
    if (t >= v0 && t < v0 + n) cb.label_logit[r] = zt[(t - v0) * ldz + r];
  }
}

// Merges the blocks' statistics of each row, in block order; the chunk's
// contribution to the loss sum and the accuracy count.
CrossEntropyResult merge_blocks(const Problem& p, const ChunkBuffers& cb, int64_t first, int64_t rows) {
  CrossEntropyResult result;
  const double eps = p.options.label_smoothing;
  for (int64_t r = 0; r < cb.lanes; ++r) {
    if (r >= rows) {  // padding lanes: zero gradient
      cb.row_max[r] = std::numeric_limits<float>::infinity();
      cb.log_sum[r] = 0.0f;
      cb.lane_scale[r] = cb.lane_smooth[r] = 0.0f;
      continue;
    }
    double zsum = 0;
    float top = -std::numeric_limits<float>::infinity(), arg = 0;
    for (int64_t b = 0; b < cb.blocks; ++b) {
      const int64_t i = b * cb.lanes + r;
      zsum += cb.block_zsum[i];
      if (cb.block_max[i] > top) top = cb.block_max[i], arg = cb.block_arg[i];  // the first largest
    }
    double sum = 0;
    for (int64_t b = 0; b < cb.blocks; ++b) {
      const int64_t i = b * cb.lanes + r;
      sum += cb.block_sum[i] * std::exp(static_cast<double>(cb.block_max[i]) - top);
    }
    const double lse = top + std::log(sum);
    cb.row_max[r] = top;
    cb.log_sum[r] = static_cast<float>(std::log(sum));
    cb.lane_scale[r] = p.options.grad_scale;
    cb.lane_smooth[r] = static_cast<float>(eps / p.V * p.options.grad_scale);
    result.loss_sum += lse - (1 - eps) * cb.label_logit[r] - eps * zsum / p.V;
    result.correct += static_cast<int64_t>(arg) == p.labels.targets[first + r];
  }
  return result;
}

// Step 2 for vocabulary block `block`: dZ^T in place of Z^T, then its rows of
// d_bias and d_weight.
void gradient_block(const Problem& p, const ChunkBuffers& cb, int64_t block, int64_t first, int64_t rows, bool add) {
  const int64_t v0 = block * kVocabBlock, n = std::min(kVocabBlock, p.V - v0), ldz = cb.ldz;
  float* zt = cb.zt + v0 * ldz;
  for (int64_t v = 0; v < n; ++v) {
    Vec row_sum = splat(0.0f);
    for (int64_t j = 0; j < cb.lanes; j += kWidth) {
      const Vec shifted = load(zt + v * ldz + j) - load(cb.row_max + j) - load(cb.log_sum + j);
      const Vec p_scaled = exp(shifted) * load(cb.lane_scale + j);
      const Vec dz = p_scaled - load(cb.lane_smooth + j);
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
  // d_weight rows: (n, C) (+)= dZ^T (n, rows) . H (rows, C), a few rows at a
  // time across all of C, so d_weight streams through memory in order; a
  // column tail narrower than a vector goes through a small buffer.
  const int64_t ldw = p.d_weight.row_stride, whole = p.C / kWidth * kWidth;
  for (int64_t v = 0; v < n; v += kTileRows) {
    const int64_t tile = std::min<int64_t>(kTileRows, n - v);
    const StridedA a{zt + v * ldz, ldz, 1};
    float* dw = p.d_weight.row(v0 + v);
    for (int64_t c0 = 0; c0 < whole; c0 += kStrip) {
      const int64_t cols = std::min(kStrip, whole - c0);
      const float* b = cb.hc_panel(c0 / kStrip);
      if (add) gemm<Update::accumulate, 0, 1>(tile, cols, rows, a, b, kStrip, dw + c0, ldw);
      else gemm<Update::overwrite, 0, 1>(tile, cols, rows, a, b, kStrip, dw + c0, ldw);
    }
    if (whole < p.C) {
      alignas(64) float tail[kTileRows * kWidth];
      gemm<Update::overwrite, 0, 1>(tile, kWidth, rows, a, cb.hc_panel(whole / kStrip) + whole % kStrip, kStrip,
                                    tail, kWidth);
      for (int64_t r = 0; r < tile; ++r)
        for (int64_t c = whole; c < p.C; ++c)
          dw[r * ldw + c] = (add ? dw[r * ldw + c] : 0.0f) + tail[r * kWidth + c - whole];
    }
  }
}

// Step 3 for column strips [strip_begin, strip_end) of C: dh = dZ W over the
// whole vocabulary, kDepthBlock rows of W at a time. Both operands are packed
// per depth block: W's columns per strip (B), and dZ into k-major panels of
// kTileRows rows (A), whose broadcasts are then contiguous rather than one
// cache line per step.
void hidden_gradient(const Problem& p, const ChunkBuffers& cb, int64_t rows, int64_t strip_begin, int64_t strip_end,
                     float* w_panels, float* dz_panels) {
  const int64_t strips = strip_end - strip_begin, tiles = ceil_div(rows, kTileRows);
  for (int64_t k0 = 0; k0 < p.V; k0 += kDepthBlock) {
    const int64_t depth = std::min(kDepthBlock, p.V - k0);
    for (int64_t k = 0; k < depth; ++k) {
      pack_row_strips(w_panels + k * kStrip, kDepthBlock * kStrip, p.weight.row(k0 + k), p.C, strip_begin,
                      strip_end);
      // (The last panel may take lanes past the chunk's rows: the gemm below
      // reads only `tile` rows of it.)
      const float* dz = cb.zt + (k0 + k) * cb.ldz;
      for (int64_t t = 0; t < tiles; ++t)
        std::memcpy(dz_panels + (t * kDepthBlock + k) * kTileRows, dz + t * kTileRows, kTileRows * sizeof(float));
    }
    for (int64_t s = 0; s < strips; ++s) {
      const int64_t c0 = (strip_begin + s) * kStrip, cols = std::min(kStrip, p.Cv - c0);
      const float* b = w_panels + s * kDepthBlock * kStrip;
      for (int64_t t = 0; t < tiles; ++t) {
        const StridedA a{dz_panels + t * kDepthBlock * kTileRows, 1, kTileRows};
        const int64_t tile = std::min<int64_t>(kTileRows, rows - t * kTileRows);
        float* c = cb.dh + t * kTileRows * p.Cv + c0;
        if (k0 == 0) gemm<Update::overwrite, 1, kTileRows>(tile, cols, depth, a, b, kStrip, c, p.Cv);
        else gemm<Update::accumulate, 1, kTileRows>(tile, cols, depth, a, b, kStrip, c, p.Cv);
      }
    }
  }
}

// d_hidden rows between consecutive labelled rows (and before the first and
// after the last) are zero.
void zero_unlabelled_rows(const Problem& p) {
  const int64_t N = p.d_hidden.rows, M = p.labels.count;
#pragma omp parallel for num_threads(threads_for(N * p.C, int64_t{1} << 20)) schedule(static)
  for (int64_t i = 0; i <= M; ++i) {
    const int64_t begin = i > 0 ? p.labels.rows[i - 1] + 1 : 0, end = i < M ? p.labels.rows[i] : N;
    for (int64_t r = begin; r < end; ++r) std::memset(p.d_hidden.row(r), 0, p.C * sizeof(float));
  }
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
  ScratchBuffer<float> chunk_memory(scratch_floats<ChunkBuffers>(p, R));
  Carver carver(chunk_memory.get());
  ChunkBuffers cb(carver, p, R);
  const int64_t c_strips = ceil_div(p.Cv, kStrip);
  const int threads = std::min(threads_for(cb.blocks, 2), threads_for(labels.count * p.V * p.C, kMinWorkPerThread));
  const int64_t w_panel_floats = c_strips * kDepthBlock * kStrip;
  const int64_t dz_panel_floats = ceil_div(R, kTileRows) * kDepthBlock * kTileRows;
  ScratchBuffer<float> panels(p.grads ? threads * (w_panel_floats + dz_panel_floats) : 0);
  // One parallel region for every chunk: the threads are woken once per
  // call, not once per chunk (each wake-up cost about 1 ms in LayerNorm's
  // backward). Every step below ends in a barrier, so a chunk's buffers are
  // free again when the next chunk starts.
#pragma omp parallel num_threads(threads)
  for (int64_t first = 0; first < labels.count; first += R) {
    const int64_t rows = std::min(R, labels.count - first);
    const bool add = options.accumulate || first > 0;
#pragma omp single
    cb.start(rows);
    pack_chunk(p, cb, first, rows);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < cb.blocks; ++b) logits_block(p, cb, b, first, rows);
#pragma omp single
    {
      const CrossEntropyResult chunk = merge_blocks(p, cb, first, rows);
      total.loss_sum += chunk.loss_sum;
      total.correct += chunk.correct;
    }
    if (!p.grads) continue;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < cb.blocks; ++b) gradient_block(p, cb, b, first, rows, add);
    const int t = thread_index(), n = threads_in_region();
    float* mine = panels.get() + t * (w_panel_floats + dz_panel_floats);
    hidden_gradient(p, cb, rows, c_strips * t / n, c_strips * (t + 1) / n, mine, mine + w_panel_floats);
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(p.d_hidden.row(p.labels.rows[first + r]), cb.dh + r * p.Cv, p.C * sizeof(float));
  }
  return total;
}

}  // namespace ssl_core::cpu::SSL_CORE_ISA
