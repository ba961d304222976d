// Fused linear layer + softmax cross-entropy on the GPU: the loss of a
// masked-LM or LM head and its gradients (formulas in cross_entropy.h, the
// CPU twin in csrc/cpu/linear_cross_entropy.cpp), only for the labelled rows
// and without ever holding the logits of all of them.
//
// Shapes: hidden (N, C) rows view, weight (V, C), bias (V,) or null; the
// labelled rows `labels.rows` (count,), ascending, with their targets.
//
// Design. The labelled rows go in chunks of R <= 256 rows (R * V logits at
// most 64 MB, but never fewer than 64 rows: more above V = 256K); for each
// chunk, on the stream:
//   1. logits_kernel: Z = H W^T + b in 64 x 64 tiles (rows x vocabulary),
//      a K loop over C through shared memory (32-deep slices, 4 x 4 outputs
//      per thread). A block walks kTilesPerSplit vocabulary tiles of one
//      split, merging each tile's per-row max / sum of exp / first argmax /
//      sum of logits into a running (online) log-sum-exp in registers; it
//      leaves one such record per (split, row) in a small scratch. The
//      target's logit is written by the one thread that computes it. With
//      gradients asked for, the tile's logits are also stored in the chunk's
//      (R, V) buffer: recomputing them in the backward would cost a fourth
//      product as large as the forward (12 GFLOP per 256 rows at BERT's
//      V = 30522, C = 768), keeping them a few passes over 31 MB. (Without a
//      buffer, a block owning a d_hidden tile of 64 of the C columns would
//      need the logits over all of C: C / 64 recomputations.)
//   2. merge_kernel: per row, the splits' records merged in split order
//      (float64) into the row's max and log of its sum of exp (kept apart:
//      at logits of 1e4 a float32 log-sum-exp would lose 5e-4), its loss
//      and whether its first argmax is the target.
//   3. (gradients) softmax_gradient_kernel: dZ = (softmax - (1 - eps) onehot
//      - eps / V) * grad_scale in place of Z, elementwise.
//   4. hidden_gradient_kernel: d_hidden rows = dZ W, one block per 64 x 64
//      output tile and vocabulary split (the output is small, K = V long:
//      splits fill the GPU), K loop over the split; with several splits the
//      partial rows are added in split order by a second small kernel.
//      Rows are scattered to their place in N.
//   5. weight_gradient_kernel: d_weight (+)= dZ^T H, one block per 64 x 64
//      tile of d_weight, K loop over the chunk's rows; the blocks of the
//      first column tile also own d_bias (+)= column sums of dZ.
// Every output element has one owner block that sums in an order fixed by
// the shapes, and chunks follow each other on the stream: no float atomics,
// results are bit-identical from run to run. Finally one block sums the rows'
// losses (float64) and hits in a fixed tree order and the launcher brings
// them back (the one launcher that synchronizes its stream). Unlabelled rows
// of d_hidden are zeroed first by a kernel that finds labelled rows by
// binary search in `labels.rows`.
//
// Bad labels (the binding cannot check device memory cheaply): a labelled
// row whose row number is outside [0, N) or whose target is outside [0, V) is
// skipped: it adds nothing to the loss, the count of correct rows or the
// gradients, and its d_hidden row (when it exists) is zero. Nothing is read
// or written out of bounds. Rows not strictly ascending are not detected;
// duplicated rows then leave d_hidden undefined for them.
//
// GPU notes: 256 threads per block, static shared memory 16.6 KB (+2 KB of
// row pointers); tiles are read coalesced along their contiguous axis (rows
// of hidden and W along C, dZ along V) and stored transposed with a padding
// column so that neither the stores nor the inner product's reads conflict
// in shared memory banks.
#include <cmath>
#include <cstdint>

#include "common.cuh"

namespace ssl_core::cuda {
namespace {

constexpr int kThreads = 256;        // per block of the tiled kernels: 16 x 16
constexpr int kLanes = 16;           // threads along a tile's columns (a half warp)
constexpr int kTile = 64;            // output tile: kTile x kTile, 4 x 4 per thread
constexpr int kMicro = kTile / kLanes;
constexpr int kDepth = 32;           // K slice staged in shared memory
constexpr int kPad = kTile + 1;      // padded row of a staged slice: no bank conflicts
constexpr int kTilesPerSplit = 4;    // vocabulary tiles one block of logits_kernel walks
constexpr int64_t kMaxChunkRows = 256;
constexpr int64_t kLogitBudget = int64_t{64} << 20;  // bytes of one chunk's (R, V) logits
constexpr int64_t kHiddenBlocks = 512;     // blocks step 4 aims for
constexpr int64_t kHiddenSplitMin = 512;   // vocabulary entries per split of step 4, at least
constexpr int64_t kMaxHiddenSplits = 64;   // (gridDim.z's limit)
constexpr int kZeroThreads = 128;
constexpr int kReduceThreads = 256;

// What every kernel of one call shares (device pointers).
struct Problem {
  const float* hidden;
  int64_t N, hidden_stride;
  const float* weight;
  int64_t weight_stride;
  const float* bias;  // or null
  const int64_t* rows;
  const int64_t* targets;
  int64_t V, C;
  float label_smoothing, grad_scale;
  float smooth;  // eps / V * grad_scale, subtracted from every dz
  float hit;     // (1 - eps) * grad_scale, subtracted from the target's dz
};

// One chunk of labelled rows [first, first + rows) and its scratch.
struct Chunk {
  int64_t first, rows;
  int64_t R;       // capacity: rows of the scratch arrays
  int64_t splits;  // vocabulary splits of logits_kernel
  float* z;        // (R, V): logits, then dz; null without gradients
  // (splits, R): each split's max logit of each row, sum of exp(z - max),
  // sum of logits and first argmax.
  float *part_max, *part_sum, *part_zsum;
  int* part_arg;
  float* target_logit;  // (R,)
  float* row_max;       // (R,)
  float* log_sum;       // (R,)
  int64_t* row_target;  // (R,): the target, or -1 for a skipped row
};

__device__ __forceinline__ bool row_in_range(const Problem& p, int64_t row) { return row >= 0 && row < p.N; }

// Labelled row i (over all chunks) counts: its row and target are in range.
__device__ __forceinline__ bool label_ok(const Problem& p, int64_t i) {
  const int64_t target = p.targets[i];
  return row_in_range(p, p.rows[i]) && target >= 0 && target < p.V;
}

// The hidden row of chunk row r, or null for padding and skipped rows.
__device__ __forceinline__ const float* chunk_hidden_row(const Problem& p, const Chunk& ch, int64_t r) {
  if (r >= ch.rows || !label_ok(p, ch.first + r)) return nullptr;
  return p.hidden + p.rows[ch.first + r] * p.hidden_stride;
}

// Stages a kDepth x kTile slice, tile[k][o] = value(o, k), from a source
// whose k axis is contiguous in memory: consecutive threads take consecutive k.
template <class F>
__device__ __forceinline__ void stage_k_contiguous(float (*tile)[kPad], F value) {
  for (int e = threadIdx.x; e < kDepth * kTile; e += kThreads) {
    const int o = e / kDepth, k = e % kDepth;
    tile[k][o] = value(o, k);
  }
}

// The same from a source whose o axis is contiguous: consecutive threads take
// consecutive o.
template <class F>
__device__ __forceinline__ void stage_o_contiguous(float (*tile)[kPad], F value) {
  for (int e = threadIdx.x; e < kDepth * kTile; e += kThreads) {
    const int k = e / kTile, o = e % kTile;
    tile[k][o] = value(o, k);
  }
}

// acc[i][j] += sum_k a[k][ty + 16 i] * b[k][tx + 16 j]: the thread's 4 x 4
// outputs, strided by 16 so that a half warp reads 16 consecutive floats of b.
__device__ __forceinline__ void multiply_slices(float (&acc)[kMicro][kMicro], const float (*a)[kPad],
                                                const float (*b)[kPad], int ty, int tx) {
#pragma unroll 8
  for (int k = 0; k < kDepth; ++k) {
    float av[kMicro], bv[kMicro];
#pragma unroll
    for (int i = 0; i < kMicro; ++i) av[i] = a[k][ty + kLanes * i];
#pragma unroll
    for (int j = 0; j < kMicro; ++j) bv[j] = b[k][tx + kLanes * j];
#pragma unroll
    for (int i = 0; i < kMicro; ++i)
#pragma unroll
      for (int j = 0; j < kMicro; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
  }
}

// Sum over the 16 lanes of a half warp (all 32 lanes call it).
__device__ __forceinline__ float half_warp_sum(float value) {
  for (int offset = kLanes / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(kFullWarp, value, offset);
  return value;
}

// Zeroes rows of a rows view, except those listed in `labelled` (ascending;
// null: zero every row). One block per row at a time.
__global__ void __launch_bounds__(kZeroThreads)
    zero_rows_kernel(float* data, int64_t rows, int64_t cols, int64_t stride, const int64_t* labelled,
                     int64_t count) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    if (labelled) {
      int64_t lo = 0, hi = count;  // the first entry >= r
      while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (labelled[mid] < r) lo = mid + 1;
        else hi = mid;
      }
      if (lo < count && labelled[lo] == r) continue;  // written by hidden_gradient_kernel
    }
    float* row = data + r * stride;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) row[c] = 0.0f;
  }
}

// Step 1: grid (splits, row tiles). Logits of 64 chunk rows against the
// vocabulary tiles of split blockIdx.x, their running statistics per row.
__global__ void __launch_bounds__(kThreads) logits_kernel(Problem p, Chunk ch) {
  __shared__ float a_slice[kDepth][kPad];  // hidden rows, [c][r]
  __shared__ float b_slice[kDepth][kPad];  // weight rows, [c][v]
  __shared__ const float* tile_rows[kTile];
  const int ty = threadIdx.x / kLanes, tx = threadIdx.x % kLanes;
  const int64_t r0 = int64_t{blockIdx.y} * kTile;
  if (threadIdx.x < kTile) tile_rows[threadIdx.x] = chunk_hidden_row(p, ch, r0 + threadIdx.x);
  int64_t target[kMicro];
  float run_max[kMicro], run_sum[kMicro], run_zsum[kMicro];
  int run_arg[kMicro];
  for (int i = 0; i < kMicro; ++i) {
    const int64_t r = r0 + ty + kLanes * i;
    target[i] = r < ch.rows && label_ok(p, ch.first + r) ? p.targets[ch.first + r] : -1;
    run_max[i] = -INFINITY;
    run_sum[i] = run_zsum[i] = 0.0f;
    run_arg[i] = 0;
  }
  __syncthreads();

  const int64_t V = p.V, C = p.C, tiles = (V + kTile - 1) / kTile;
  const int64_t tile_begin = int64_t{blockIdx.x} * kTilesPerSplit;
  const int64_t tile_end = tile_begin + kTilesPerSplit < tiles ? tile_begin + kTilesPerSplit : tiles;
  for (int64_t vt = tile_begin; vt < tile_end; ++vt) {
    const int64_t v0 = vt * kTile;
    float acc[kMicro][kMicro] = {};
    for (int64_t k0 = 0; k0 < C; k0 += kDepth) {
      stage_k_contiguous(a_slice, [&](int o, int k) {
        const float* h = tile_rows[o];
        return h && k0 + k < C ? h[k0 + k] : 0.0f;
      });
      stage_k_contiguous(b_slice, [&](int o, int k) {
        return v0 + o < V && k0 + k < C ? p.weight[(v0 + o) * p.weight_stride + k0 + k] : 0.0f;
      });
      __syncthreads();
      multiply_slices(acc, a_slice, b_slice, ty, tx);
      __syncthreads();
    }
    for (int i = 0; i < kMicro; ++i) {
      const int64_t r = r0 + ty + kLanes * i;
      float z[kMicro];
      float tile_max = -INFINITY;
      int tile_arg = 0x7fffffff;
      for (int j = 0; j < kMicro; ++j) {  // ascending v: strictly greater keeps the first largest
        const int64_t v = v0 + tx + kLanes * j;
        z[j] = 0.0f;
        if (v < V) {
          z[j] = acc[i][j] + (p.bias ? p.bias[v] : 0.0f);
          if (z[j] > tile_max) tile_max = z[j], tile_arg = static_cast<int>(v);
        }
      }
      for (int offset = kLanes / 2; offset > 0; offset /= 2) {
        const float other_max = __shfl_xor_sync(kFullWarp, tile_max, offset);
        const int other_arg = __shfl_xor_sync(kFullWarp, tile_arg, offset);
        if (other_max > tile_max || (other_max == tile_max && other_arg < tile_arg))
          tile_max = other_max, tile_arg = other_arg;
      }
      float sum = 0.0f, zsum = 0.0f;
      for (int j = 0; j < kMicro; ++j) {
        if (v0 + tx + kLanes * j < V) {
          sum += expf(z[j] - tile_max);
          zsum += z[j];
        }
      }
      sum = half_warp_sum(sum);
      zsum = half_warp_sum(zsum);
      // Online merge; tiles come in ascending v, so a tie keeps the earlier argmax.
      if (tile_max > run_max[i]) {
        run_sum[i] = (run_max[i] == -INFINITY ? 0.0f : run_sum[i] * expf(run_max[i] - tile_max)) + sum;
        run_max[i] = tile_max;
        run_arg[i] = tile_arg;
      } else {
        run_sum[i] += sum * expf(tile_max - run_max[i]);
      }
      run_zsum[i] += zsum;
      if (r < ch.rows) {
        for (int j = 0; j < kMicro; ++j) {
          const int64_t v = v0 + tx + kLanes * j;
          if (v >= V) continue;
          if (ch.z) ch.z[r * V + v] = z[j];
          if (v == target[i]) ch.target_logit[r] = z[j];  // exactly one thread of the grid
        }
      }
    }
  }
  if (tx == 0) {
    for (int i = 0; i < kMicro; ++i) {
      const int64_t r = r0 + ty + kLanes * i;
      if (r >= ch.rows) continue;
      const int64_t at = int64_t{blockIdx.x} * ch.R + r;
      ch.part_max[at] = run_max[i];
      ch.part_sum[at] = run_sum[i];
      ch.part_zsum[at] = run_zsum[i];
      ch.part_arg[at] = run_arg[i];
    }
  }
}

// Step 2: one thread per chunk row: the splits' statistics merged in split
// order into the row's max, log-sum and loss.
__global__ void merge_kernel(Problem p, Chunk ch, double* row_loss, int* row_correct) {
  const int64_t r = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (r >= ch.rows) return;
  const int64_t i = ch.first + r;
  if (!label_ok(p, i)) {
    row_loss[i] = 0.0;
    row_correct[i] = 0;
    ch.row_target[r] = -1;
    ch.row_max[r] = ch.log_sum[r] = 0.0f;
    return;
  }
  float top = -INFINITY;
  int arg = 0;
  for (int64_t s = 0; s < ch.splits; ++s) {
    const float m = ch.part_max[s * ch.R + r];
    if (m > top) top = m, arg = ch.part_arg[s * ch.R + r];  // the first largest
  }
  double sum = 0.0, zsum = 0.0;
  for (int64_t s = 0; s < ch.splits; ++s) {
    const int64_t at = s * ch.R + r;
    sum += static_cast<double>(ch.part_sum[at]) * exp(static_cast<double>(ch.part_max[at]) - top);
    zsum += ch.part_zsum[at];
  }
  const double eps = p.label_smoothing, log_sum = log(sum);
  const int64_t target = p.targets[i];
  row_loss[i] = top + log_sum - (1.0 - eps) * ch.target_logit[r] - eps * zsum / static_cast<double>(p.V);
  row_correct[i] = arg == target;
  ch.row_target[r] = target;
  ch.row_max[r] = top;
  ch.log_sum[r] = static_cast<float>(log_sum);
}

// Step 3: grid (vocabulary / 256, chunk rows): dz in place of z.
__global__ void __launch_bounds__(kThreads) softmax_gradient_kernel(Problem p, Chunk ch) {
  const int64_t r = blockIdx.y, v = int64_t{blockIdx.x} * kThreads + threadIdx.x;
  if (v >= p.V) return;
  float* z = ch.z + r * p.V + v;
  const int64_t target = ch.row_target[r];
  if (target < 0) {
    *z = 0.0f;
    return;
  }
  float dz = expf(*z - ch.row_max[r] - ch.log_sum[r]) * p.grad_scale - p.smooth;
  if (v == target) dz -= p.hit;
  *z = dz;
}

// Step 4: grid (column tiles of C, row tiles of the chunk, vocabulary
// splits): d_hidden rows = dZ (rows, V) . W (V, C), written (never
// accumulated). The output is only rows x C (256 x 768 at BERT's shape: 48
// tiles) while K = V is long, so the vocabulary is split among blockIdx.z
// (each split >= kHiddenSplitMin entries); with more than one split, each
// writes its partial product to `partial` (splits, R, C) and
// hidden_gradient_reduce_kernel adds them up in split order.
__global__ void __launch_bounds__(kThreads) hidden_gradient_kernel(Problem p, Chunk ch, int64_t split_depth,
                                                                   float* partial, float* d_hidden,
                                                                   int64_t d_hidden_stride) {
  __shared__ float a_slice[kDepth][kPad];  // dz, [v][r]
  __shared__ float b_slice[kDepth][kPad];  // weight, [v][c]
  const int ty = threadIdx.x / kLanes, tx = threadIdx.x % kLanes;
  const int64_t c0 = int64_t{blockIdx.x} * kTile, r0 = int64_t{blockIdx.y} * kTile;
  const int64_t V = p.V, C = p.C;
  const int64_t k_begin = int64_t{blockIdx.z} * split_depth;
  const int64_t k_end = k_begin + split_depth < V ? k_begin + split_depth : V;
  float acc[kMicro][kMicro] = {};
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kDepth) {
    stage_k_contiguous(a_slice, [&](int o, int k) {
      return r0 + o < ch.rows && k0 + k < k_end ? ch.z[(r0 + o) * V + k0 + k] : 0.0f;
    });
    stage_o_contiguous(b_slice, [&](int o, int k) {
      return k0 + k < k_end && c0 + o < C ? p.weight[(k0 + k) * p.weight_stride + c0 + o] : 0.0f;
    });
    __syncthreads();
    multiply_slices(acc, a_slice, b_slice, ty, tx);
    __syncthreads();
  }
  for (int i = 0; i < kMicro; ++i) {
    const int64_t r = r0 + ty + kLanes * i;
    if (r >= ch.rows) continue;
    float* out;
    if (partial) {
      out = partial + (int64_t{blockIdx.z} * ch.R + r) * C;
    } else {
      const int64_t row = p.rows[ch.first + r];
      if (!row_in_range(p, row)) continue;
      out = d_hidden + row * d_hidden_stride;
    }
    for (int j = 0; j < kMicro; ++j) {
      const int64_t c = c0 + tx + kLanes * j;
      if (c < C) out[c] = acc[i][j];
    }
  }
}

// Step 4b (several vocabulary splits): grid (C / 256, chunk rows): the
// splits' partial rows of d_hidden summed in split order.
__global__ void __launch_bounds__(kThreads) hidden_gradient_reduce_kernel(Problem p, Chunk ch, int64_t splits,
                                                                          const float* partial, float* d_hidden,
                                                                          int64_t d_hidden_stride) {
  const int64_t r = blockIdx.y, c = int64_t{blockIdx.x} * kThreads + threadIdx.x;
  const int64_t row = p.rows[ch.first + r];
  if (c >= p.C || !row_in_range(p, row)) return;
  float sum = 0.0f;
  for (int64_t s = 0; s < splits; ++s) sum += partial[(s * ch.R + r) * p.C + c];
  d_hidden[row * d_hidden_stride + c] = sum;
}

// Step 5: grid (vocabulary tiles, column tiles of C): d_weight (+)= dZ^T H
// over the chunk's rows; the blocks of column tile 0 also do d_bias.
__global__ void __launch_bounds__(kThreads) weight_gradient_kernel(Problem p, Chunk ch, float* d_weight,
                                                                   int64_t d_weight_stride, float* d_bias,
                                                                   bool add) {
  __shared__ float a_slice[kDepth][kPad];  // dz, [r][v]
  __shared__ float b_slice[kDepth][kPad];  // hidden rows, [r][c]
  __shared__ const float* chunk_rows[kMaxChunkRows];
  const int ty = threadIdx.x / kLanes, tx = threadIdx.x % kLanes;
  const int64_t v0 = int64_t{blockIdx.x} * kTile, c0 = int64_t{blockIdx.y} * kTile;
  const int64_t V = p.V, C = p.C, rows = ch.rows;
  for (int64_t r = threadIdx.x; r < rows; r += kThreads) chunk_rows[r] = chunk_hidden_row(p, ch, r);
  const bool owns_bias = d_bias && blockIdx.y == 0;
  float bias_sum = 0.0f;  // thread t < kTile: column v0 + t
  float acc[kMicro][kMicro] = {};
  __syncthreads();
  for (int64_t k0 = 0; k0 < rows; k0 += kDepth) {
    stage_o_contiguous(a_slice, [&](int o, int k) {
      return k0 + k < rows && v0 + o < V ? ch.z[(k0 + k) * V + v0 + o] : 0.0f;
    });
    stage_o_contiguous(b_slice, [&](int o, int k) {
      const float* h = k0 + k < rows ? chunk_rows[k0 + k] : nullptr;
      return h && c0 + o < C ? h[c0 + o] : 0.0f;
    });
    __syncthreads();
    if (owns_bias && threadIdx.x < kTile)
      for (int k = 0; k < kDepth; ++k) bias_sum += a_slice[k][threadIdx.x];
    multiply_slices(acc, a_slice, b_slice, ty, tx);
    __syncthreads();
  }
  for (int i = 0; i < kMicro; ++i) {
    const int64_t v = v0 + ty + kLanes * i;
    if (v >= V) continue;
    float* out = d_weight + v * d_weight_stride;
    for (int j = 0; j < kMicro; ++j) {
      const int64_t c = c0 + tx + kLanes * j;
      if (c < C) out[c] = (add ? out[c] : 0.0f) + acc[i][j];
    }
  }
  if (owns_bias && threadIdx.x < kTile && v0 + threadIdx.x < V)
    d_bias[v0 + threadIdx.x] = (add ? d_bias[v0 + threadIdx.x] : 0.0f) + bias_sum;
}

// One block: the rows' losses and hits summed in a fixed tree order.
__global__ void __launch_bounds__(kReduceThreads)
    reduce_loss_kernel(const double* row_loss, const int* row_correct, int64_t count, double* loss_sum,
                       long long* correct) {
  __shared__ double loss_part[kReduceThreads];
  __shared__ long long correct_part[kReduceThreads];
  const int t = threadIdx.x;
  double loss = 0.0;
  long long hits = 0;
  for (int64_t i = t; i < count; i += kReduceThreads) {
    loss += row_loss[i];
    hits += row_correct[i];
  }
  loss_part[t] = loss;
  correct_part[t] = hits;
  __syncthreads();
  for (int stride = kReduceThreads / 2; stride > 0; stride /= 2) {
    if (t < stride) {
      loss_part[t] += loss_part[t + stride];
      correct_part[t] += correct_part[t + stride];
    }
    __syncthreads();
  }
  if (t == 0) {
    *loss_sum = loss_part[0];
    *correct = correct_part[0];
  }
}

void zero_rows(float* data, int64_t rows, int64_t cols, int64_t stride, const int64_t* labelled, int64_t count,
               Stream stream) {
  if (rows == 0 || cols == 0) return;
  const int64_t blocks = rows < 4096 ? rows : 4096;
  SSL_CORE_LAUNCH(zero_rows_kernel, static_cast<unsigned>(blocks), kZeroThreads, 0, stream, data, rows, cols,
                  stride, labelled, count);
  check_launch("linear_cross_entropy (zero_rows_kernel)");
}

// Scratch of one call: a single stream-ordered allocation, carved up.
class Scratch {
 public:
  Scratch(size_t bytes, Stream stream) : stream_(stream) {
    check_cuda(cudaMallocAsync(&base_, bytes, static_cast<cudaStream_t>(stream)),
               "linear_cross_entropy: cudaMallocAsync");
  }
  ~Scratch() { cudaFreeAsync(base_, static_cast<cudaStream_t>(stream_)); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <class T>
  T* take(int64_t n) {
    T* p = reinterpret_cast<T*>(static_cast<unsigned char*>(base_) + used_);
    used_ += aligned(n * sizeof(T));
    return p;
  }
  static size_t aligned(size_t bytes) { return (bytes + 255) / 256 * 256; }

 private:
  void* base_ = nullptr;
  size_t used_ = 0;
  Stream stream_;
};

}  // namespace

CrossEntropyResult linear_cross_entropy(RowsView d_hidden, RowsView d_weight, float* d_bias, ConstRowsView hidden,
                                        ConstRowsView weight, const float* bias, const CrossEntropyLabels& labels,
                                        const CrossEntropyOptions& options, Stream stream) {
  const int64_t V = weight.rows, C = weight.cols, count = labels.count;
  const bool grads = d_hidden.data != nullptr;
  CrossEntropyResult result;
  if (grads) zero_rows(d_hidden.data, d_hidden.rows, C, d_hidden.row_stride, labels.rows, count, stream);
  if (count == 0 || V == 0) {
    if (grads && !options.accumulate) {
      zero_rows(d_weight.data, V, C, d_weight.row_stride, nullptr, 0, stream);
      if (d_bias) zero_rows(d_bias, 1, V, V, nullptr, 0, stream);
    }
    return result;
  }

  const double eps = options.label_smoothing;
  Problem p{hidden.data, hidden.rows, hidden.row_stride, weight.data, weight.row_stride, bias,
            labels.rows, labels.targets, V, C, options.label_smoothing, options.grad_scale,
            static_cast<float>(eps / V * options.grad_scale),
            (1.0f - options.label_smoothing) * options.grad_scale};

  // Chunk rows: whole row tiles, the chunk's logits within the budget.
  int64_t R = kLogitBudget / (V * 4) / kTile * kTile;
  R = R < kTile ? kTile : (R > kMaxChunkRows ? kMaxChunkRows : R);
  if (ceil_div(count, kTile) * kTile < R) R = ceil_div(count, kTile) * kTile;
  const int64_t splits = ceil_div(ceil_div(V, kTile), kTilesPerSplit);
  // Vocabulary splits of step 4: enough blocks to fill a GPU, each split at
  // least kHiddenSplitMin deep so its partial rows cost little next to it.
  const int64_t output_tiles = ceil_div(C, kTile) * ceil_div(R, kTile);
  int64_t hidden_splits = ceil_div(kHiddenBlocks, output_tiles);
  if (hidden_splits > ceil_div(V, kHiddenSplitMin)) hidden_splits = ceil_div(V, kHiddenSplitMin);
  if (hidden_splits > kMaxHiddenSplits) hidden_splits = kMaxHiddenSplits;
  const int64_t split_depth = ceil_div(ceil_div(V, hidden_splits), kDepth) * kDepth;
  hidden_splits = ceil_div(V, split_depth);

  size_t bytes = Scratch::aligned(count * sizeof(double)) + Scratch::aligned(count * sizeof(int)) + 2 * 256 +
                 4 * Scratch::aligned(splits * R * 4) + 3 * Scratch::aligned(R * 4) +
                 Scratch::aligned(R * sizeof(int64_t)) + (grads ? Scratch::aligned(R * V * sizeof(float)) : 0) +
                 (grads && hidden_splits > 1 ? Scratch::aligned(hidden_splits * R * C * sizeof(float)) : 0);
  Scratch scratch(bytes, stream);
  double* row_loss = scratch.take<double>(count);
  int* row_correct = scratch.take<int>(count);
  double* loss_sum = scratch.take<double>(1);
  long long* correct = scratch.take<long long>(1);
  Chunk ch{};
  ch.R = R;
  ch.splits = splits;
  ch.part_max = scratch.take<float>(splits * R);
  ch.part_sum = scratch.take<float>(splits * R);
  ch.part_zsum = scratch.take<float>(splits * R);
  ch.part_arg = scratch.take<int>(splits * R);
  ch.target_logit = scratch.take<float>(R);
  ch.row_max = scratch.take<float>(R);
  ch.log_sum = scratch.take<float>(R);
  ch.row_target = scratch.take<int64_t>(R);
  ch.z = grads ? scratch.take<float>(R * V) : nullptr;
  float* hidden_partial = grads && hidden_splits > 1 ? scratch.take<float>(hidden_splits * R * C) : nullptr;

  for (int64_t first = 0; first < count; first += R) {
    ch.first = first;
    ch.rows = count - first < R ? count - first : R;
    const unsigned row_tiles = static_cast<unsigned>(ceil_div(ch.rows, kTile));
    SSL_CORE_LAUNCH(logits_kernel, dim3(static_cast<unsigned>(splits), row_tiles), kThreads, 0, stream, p, ch);
    check_launch("linear_cross_entropy (logits_kernel)");
    SSL_CORE_LAUNCH(merge_kernel, static_cast<unsigned>(ceil_div(ch.rows, 128)), 128, 0, stream, p, ch, row_loss,
                    row_correct);
    check_launch("linear_cross_entropy (merge_kernel)");
    if (!grads) continue;
    SSL_CORE_LAUNCH(softmax_gradient_kernel,
                    dim3(static_cast<unsigned>(ceil_div(V, kThreads)), static_cast<unsigned>(ch.rows)), kThreads, 0,
                    stream, p, ch);
    check_launch("linear_cross_entropy (softmax_gradient_kernel)");
    const unsigned column_tiles = static_cast<unsigned>(ceil_div(C, kTile));
    SSL_CORE_LAUNCH(hidden_gradient_kernel, dim3(column_tiles, row_tiles, static_cast<unsigned>(hidden_splits)),
                    kThreads, 0, stream, p, ch, split_depth, hidden_partial, d_hidden.data, d_hidden.row_stride);
    check_launch("linear_cross_entropy (hidden_gradient_kernel)");
    if (hidden_partial) {
      SSL_CORE_LAUNCH(hidden_gradient_reduce_kernel,
                      dim3(static_cast<unsigned>(ceil_div(C, kThreads)), static_cast<unsigned>(ch.rows)), kThreads,
                      0, stream, p, ch, hidden_splits, hidden_partial, d_hidden.data, d_hidden.row_stride);
      check_launch("linear_cross_entropy (hidden_gradient_reduce_kernel)");
    }
    const bool add = options.accumulate || first > 0;
    SSL_CORE_LAUNCH(weight_gradient_kernel, dim3(static_cast<unsigned>(ceil_div(V, kTile)), column_tiles),
                    kThreads, 0, stream, p, ch, d_weight.data, d_weight.row_stride, d_bias, add);
    check_launch("linear_cross_entropy (weight_gradient_kernel)");
  }
  SSL_CORE_LAUNCH(reduce_loss_kernel, 1, kReduceThreads, 0, stream, row_loss, row_correct, count, loss_sum,
                  correct);
  check_launch("linear_cross_entropy (reduce_loss_kernel)");
  long long host_correct = 0;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  check_cuda(cudaMemcpyAsync(&result.loss_sum, loss_sum, sizeof(double), cudaMemcpyDeviceToHost, s),
             "linear_cross_entropy: cudaMemcpyAsync");
  check_cuda(cudaMemcpyAsync(&host_correct, correct, sizeof(long long), cudaMemcpyDeviceToHost, s),
             "linear_cross_entropy: cudaMemcpyAsync");
  check_cuda(cudaStreamSynchronize(s), "linear_cross_entropy: cudaStreamSynchronize");
  result.correct = host_correct;
  return result;
}

}  // namespace ssl_core::cuda
