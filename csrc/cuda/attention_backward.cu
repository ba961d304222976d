// Attention backward on the GPU: dq, dk, dv from dout, recomputing the
// probabilities from the forward's log-sum-exp instead of storing them.
// (Semantics: csrc/cpu/reference_attention.cpp; shapes and masks:
// attention.h; dropout: philox.h / philox.cuh.)
//
// FlashAttention-2's order (Dao 2023, algorithm 2), in three steps:
//   1. preprocess: delta_i = dout_i . out_i (B, H, Tq) into scratch, one warp
//      a row; on the atomic path it also zeroes the float32 dq accumulator.
//   2. key tile: a block per (32 keys, head, batch) keeps its k and v rows in
//      shared memory and its dk, dv rows in registers, and streams the query
//      tiles that may see its keys (q, dout, lse, delta through shared
//      memory). Per (32 x 32) tile:
//        p  = exp(scale q k^T - lse)          (0 where masked)
//        dp = (dout v^T) o F                  F: dropout factors, regenerated
//        ds = p o (dp - delta)
//        dv += (p o F)^T dout,  dk += ds^T q,  dq += ds k   (dk, dq x scale)
//      dq: atomicAdd into the float32 (B, H, Tq, D) scratch.
//   3. dq: by default, the copy of the float32 scratch into dq (x scale).
//      With deterministic=true there are no float atomics: the key-tile
//      kernel leaves dq alone and a dq pass, a block per (32 queries, head,
//      batch), loops over the key tiles in order, recomputing p and ds, with
//      dq in registers. Two of the five products are done twice, but dq is
//      bit-identical from run to run and needs no scratch (per-key-tile
//      partial dq buffers would cost Tk / 32 copies of dq in memory, and
//      ordering the atomics would need blocks waiting on each other).
//
// Work layout (128 threads, 4 warps; D padded to kDim in {16, 32, 64, 128}):
// the score phase gives each thread 2 queries x 4 adjacent keys, so one
// Philox call serves 4 dropout factors; the product phases give each thread
// 2 rows x kDim / 8 columns (columns strided by 8, so a warp reads 8
// consecutive floats of a row): 2 FMA per shared-memory load, accumulators
// in registers (kDim / 2 for dk + dv). Shared rows are padded to kDim + 1
// floats so that a warp reading one column of 4 or 8 rows hits distinct
// banks. Shared memory: (4 * 32 * (kDim + 1) + 2 * 32 * 33 + 64) floats, 73 KB
// at kDim = 128 (opted into with cudaFuncSetAttribute), 41 KB at 64.
//
// Masks exactly as forward: key tiles at or past key_lengths[b] are skipped
// (their dk, dv rows written as zeros, their k and v never read), causal /
// prefix skips the query tiles above the diagonal (and, in the dq pass, the
// key tiles right of it); an explicit mask is tested per element. Lengths
// come from device memory and are clamped to [0, Tk]. The mask resolution and
// test are the forward's own, shared in attention_common.cuh. A fully masked
// query row has lse = +inf, so p = 0 and its gradients are zero.
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "attention_common.cuh"
#include "common.cuh"
#include "philox.cuh"

namespace ssl_core::cuda {
namespace {

constexpr int kKeyTile = 32;    // keys of a block of the key-tile kernel
constexpr int kQueryTile = 32;  // queries of a tile (and a block of the dq pass)
constexpr int kThreads = 128;
constexpr int kScoreLd = 33;    // row stride of the p and ds tiles
constexpr int kMaxDim = 128;
static_assert(kKeyTile == 32 && kQueryTile == 32 && kThreads == 128, "thread layouts below assume these");

struct Heads {  // a (B, T, H, D) array with a contiguous last axis
  const float* data;
  int64_t batch_stride, seq_stride, head_stride;
};
struct MutableHeads {
  float* data;
  int64_t batch_stride, seq_stride, head_stride;
};

struct Params {
  MutableHeads dq, dk, dv;
  Heads dout, q, k, v, out;
  const float* lse;   // (B, H, Tq)
  float* delta;       // (B, H, Tq) scratch: dout . out
  float* dq_accum;    // (B, H, Tq, D) scratch, or null (deterministic)
  int64_t B, H, Tq, Tk, D;
  float scale, scale_log2;  // scale, scale * log2(e)
  DeviceMask mask;
  DeviceDropout dropout;
};

__device__ __forceinline__ int64_t tiles_of(int64_t n, int64_t tile) { return (n + tile - 1) / tile; }

// The first query that may see some key at or after `key` (structured masks).
__device__ __forceinline__ int64_t first_query_seeing(const HeadMask& m, int64_t key) {
  if (!m.structured || key < m.prefix) return 0;
  return key - m.diagonal > 0 ? key - m.diagonal : 0;
}

// The shared-memory tiles of a block, carved from dynamic shared memory.
template <int kDim>
struct Tiles {
  static constexpr int kLd = kDim + 1;  // padded row: a column of rows spans distinct banks
  float* k;      // (kKeyTile, kLd)
  float* v;      // (kKeyTile, kLd)
  float* q;      // (kQueryTile, kLd)
  float* dout;   // (kQueryTile, kLd)
  float* p;      // (kQueryTile, kScoreLd): p o F, query-major
  float* ds;     // (kQueryTile, kScoreLd)
  float* lse;    // (kQueryTile,): lse * log2(e)
  float* delta;  // (kQueryTile,)

  static constexpr size_t floats() {
    return size_t{2} * kKeyTile * kLd + size_t{2} * kQueryTile * kLd + size_t{2} * kQueryTile * kScoreLd +
           size_t{2} * kQueryTile;
  }
  static constexpr size_t bytes() { return floats() * sizeof(float); }

  __device__ __forceinline__ explicit Tiles(float* s) {
    k = s;
    v = k + kKeyTile * kLd;
    q = v + kKeyTile * kLd;
    dout = q + kQueryTile * kLd;
    p = dout + kQueryTile * kLd;
    ds = p + kQueryTile * kScoreLd;
    lse = ds + kQueryTile * kScoreLd;
    delta = lse + kQueryTile;
  }
};

// rows x kDim floats into a padded shared tile: rows past `valid` and
// columns past D are zeros. Consecutive threads read consecutive floats of a
// row (coalesced when D == kDim).
template <int kDim, int kRows>
__device__ __forceinline__ void load_rows(float* dst, const float* src, int64_t row_stride, int64_t valid,
                                          int64_t D) {
  for (int e = threadIdx.x; e < kRows * kDim; e += kThreads) {
    const int r = e / kDim, c = e % kDim;
    dst[r * (kDim + 1) + c] = r < valid && c < D ? src[r * row_stride + c] : 0.0f;
  }
}

// The probabilities (times the dropout factors) and score gradients of a
// (query tile i0) x (key tile j0) pair into tiles.p and tiles.ds. Thread:
// queries qr, qr + 16 and keys 4g .. 4g + 3 of the tile.
template <int kDim, bool kNeedP>
__device__ __forceinline__ void score_gradients(const Params& prm, const Tiles<kDim>& t, const HeadMask& m,
                                                int64_t b, int64_t h, int64_t i0, int64_t j0) {
  constexpr int kLd = Tiles<kDim>::kLd;
  const int g = threadIdx.x % 8, qr = threadIdx.x / 8;
  float s[2][4] = {}, dp[2][4] = {};
#pragma unroll 4
  for (int d = 0; d < kDim; ++d) {
    float kk[4], vv[4];
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      kk[w] = t.k[(4 * g + w) * kLd + d];
      vv[w] = t.v[(4 * g + w) * kLd + d];
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float qq = t.q[(qr + 16 * r) * kLd + d], oo = t.dout[(qr + 16 * r) * kLd + d];
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        s[r][w] = fmaf(qq, kk[w], s[r][w]);
        dp[r][w] = fmaf(oo, vv[w], dp[r][w]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = qr + 16 * r;
    const int64_t i = i0 + row;
    const float lse_log2 = t.lse[row], delta = t.delta[row];
    PhiloxWords4 words = {{0u, 0u, 0u, 0u}};
    if (prm.dropout.enabled && i < prm.Tq) words = dropout_words(prm.dropout, b, h, i, j0 + 4 * g);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int64_t j = j0 + 4 * g + w;
      const bool visible = i < prm.Tq && j < prm.Tk && may_attend(m, i, j);
      const float prob = visible ? exp2f(fmaf(s[r][w], prm.scale_log2, -lse_log2)) : 0.0f;
      float factor = 1.0f;
      if (prm.dropout.enabled) factor = words.w[w] >= prm.dropout.threshold ? prm.dropout.keep_scale : 0.0f;
      if (kNeedP) t.p[row * kScoreLd + 4 * g + w] = prob * factor;
      // Selected, not multiplied: a masked score may be inf or NaN.
      t.ds[row * kScoreLd + 4 * g + w] = visible ? prob * (dp[r][w] * factor - delta) : 0.0f;
    }
  }
}

// acc[r][c] += sum over o < 32 of coef[row_r * row_stride + o * other_stride] * x[o][8c + sub]
// for the thread's rows row_0 = threadIdx.x / 8, row_1 = row_0 + 16.
template <int kDim>
__device__ __forceinline__ void accumulate_rows(float (&acc)[2][kDim / 8], const float* coef, int row_stride,
                                                int other_stride, const float* x) {
  constexpr int kLd = kDim + 1;
  const int row = threadIdx.x / 8, sub = threadIdx.x % 8;
  // Unrolled 4 deep, but 2 for the narrowest tile: ptxas for sm_90 spilled
  // 20 bytes in attention_backward_key_tile<16> at 4.
#pragma unroll(kDim <= 16 ? 2 : 4)
  for (int o = 0; o < 32; ++o) {
    const float c0 = coef[row * row_stride + o * other_stride];
    const float c1 = coef[(row + 16) * row_stride + o * other_stride];
#pragma unroll
    for (int c = 0; c < kDim / 8; ++c) {
      const float xv = x[o * kLd + 8 * c + sub];
      acc[0][c] = fmaf(c0, xv, acc[0][c]);
      acc[1][c] = fmaf(c1, xv, acc[1][c]);
    }
  }
}

// Loads the query tile at i0 of head (b, h): q, dout, lse (times log2 e), delta.
template <int kDim>
__device__ __forceinline__ void load_query_tile(const Params& p, const Tiles<kDim>& t, int64_t b, int64_t h,
                                                int64_t i0) {
  const int64_t nq = p.Tq - i0 < kQueryTile ? p.Tq - i0 : kQueryTile;
  load_rows<kDim, kQueryTile>(t.q, p.q.data + b * p.q.batch_stride + i0 * p.q.seq_stride + h * p.q.head_stride,
                              p.q.seq_stride, nq, p.D);
  load_rows<kDim, kQueryTile>(t.dout,
                              p.dout.data + b * p.dout.batch_stride + i0 * p.dout.seq_stride + h * p.dout.head_stride,
                              p.dout.seq_stride, nq, p.D);
  if (threadIdx.x < kQueryTile) {
    const int64_t row = (b * p.H + h) * p.Tq + i0 + threadIdx.x;
    const bool in = threadIdx.x < nq;
    t.lse[threadIdx.x] = in ? p.lse[row] * kLog2e : 0.0f;
    t.delta[threadIdx.x] = in ? p.delta[row] : 0.0f;
  }
}

// Loads the key tile at j0 of head (b, h); keys at or past `key_end` (padding) are zeros.
template <int kDim>
__device__ __forceinline__ void load_key_tile(const Params& p, const Tiles<kDim>& t, int64_t b, int64_t h,
                                              int64_t j0, int64_t key_end) {
  const int64_t nk = key_end - j0 < kKeyTile ? key_end - j0 : kKeyTile;
  load_rows<kDim, kKeyTile>(t.k, p.k.data + b * p.k.batch_stride + j0 * p.k.seq_stride + h * p.k.head_stride,
                            p.k.seq_stride, nk, p.D);
  load_rows<kDim, kKeyTile>(t.v, p.v.data + b * p.v.batch_stride + j0 * p.v.seq_stride + h * p.v.head_stride,
                            p.v.seq_stride, nk, p.D);
}

// Writes factor * acc (the thread's rows row0 + {0, 16} of the tile at t0,
// columns 8c + sub) to rows < rows_valid of a (B, T, H, D) array.
template <int kDim>
__device__ __forceinline__ void store_rows(const MutableHeads& dst, int64_t b, int64_t h, int64_t t0,
                                           int64_t rows_valid, int64_t D, const float (&acc)[2][kDim / 8],
                                           float factor) {
  const int row = threadIdx.x / 8, sub = threadIdx.x % 8;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (row + 16 * r >= rows_valid) continue;
    float* out = dst.data + b * dst.batch_stride + (t0 + row + 16 * r) * dst.seq_stride + h * dst.head_stride;
#pragma unroll
    for (int c = 0; c < kDim / 8; ++c)
      if (8 * c + sub < D) out[8 * c + sub] = factor * acc[r][c];
  }
}

// 1. delta = rowsum(dout o out), one warp a row; zeroes the dq accumulator.
__global__ __launch_bounds__(256) void attention_backward_preprocess(Params p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * 8 + threadIdx.x / 32;  // (b * H + h) * Tq + i
  const int lane = threadIdx.x % 32;
  if (row >= p.B * p.H * p.Tq) return;  // whole warps
  const int64_t i = row % p.Tq, bh = row / p.Tq, h = bh % p.H, b = bh / p.H;
  const float* dout = p.dout.data + b * p.dout.batch_stride + i * p.dout.seq_stride + h * p.dout.head_stride;
  const float* out = p.out.data + b * p.out.batch_stride + i * p.out.seq_stride + h * p.out.head_stride;
  float sum = 0.0f;
  for (int64_t d = lane; d < p.D; d += 32) sum = fmaf(dout[d], out[d], sum);
  sum = warp_sum(sum);
  if (lane == 0) p.delta[row] = sum;
  if (p.dq_accum)
    for (int64_t d = lane; d < p.D; d += 32) p.dq_accum[row * p.D + d] = 0.0f;
}

// 2. A block per (key tile, head, batch): dk and dv of its keys; with
//    kAtomicDq, dq by atomicAdd into p.dq_accum.
template <int kDim, bool kAtomicDq>
__global__ __launch_bounds__(kThreads) void attention_backward_key_tile(Params p, int64_t key_tiles) {
  const int64_t tile = blockIdx.x % key_tiles, bh = blockIdx.x / key_tiles;
  const int64_t b = bh / p.H, h = bh % p.H, j0 = tile * kKeyTile;
  const Tiles<kDim> t(dynamic_shared<float>());
  const HeadMask m = head_mask(p.mask, b, h, p.Tq, p.Tk);
  float dk[2][kDim / 8] = {}, dv[2][kDim / 8] = {};

  if (j0 < m.key_end) {  // uniform over the block: the barriers below are reached by all
    load_key_tile(p, t, b, h, j0, m.key_end);
    const int64_t query_tiles = tiles_of(p.Tq, kQueryTile);
    for (int64_t qt = first_query_seeing(m, j0) / kQueryTile; qt < query_tiles; ++qt) {
      const int64_t i0 = qt * kQueryTile;
      __syncthreads();  // the previous tile's readers are done
      load_query_tile(p, t, b, h, i0);
      __syncthreads();
      score_gradients<kDim, true>(p, t, m, b, h, i0, j0);
      __syncthreads();
      accumulate_rows<kDim>(dv, t.p, 1, kScoreLd, t.dout);  // dv[j] += sum_i p[i][j] dout[i]
      accumulate_rows<kDim>(dk, t.ds, 1, kScoreLd, t.q);    // dk[j] += sum_i ds[i][j] q[i]
      if (kAtomicDq) {
        float dq[2][kDim / 8] = {};
        accumulate_rows<kDim>(dq, t.ds, kScoreLd, 1, t.k);  // dq[i] += sum_j ds[i][j] k[j]
        const int row = threadIdx.x / 8, sub = threadIdx.x % 8;
        const int64_t nq = p.Tq - i0 < kQueryTile ? p.Tq - i0 : kQueryTile;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          if (row + 16 * r >= nq) continue;
          float* dst = p.dq_accum + ((b * p.H + h) * p.Tq + i0 + row + 16 * r) * p.D;
#pragma unroll
          for (int c = 0; c < kDim / 8; ++c)
            if (8 * c + sub < p.D) atomicAdd(dst + 8 * c + sub, dq[r][c]);
        }
      }
    }
  }
  // Rows past key_lengths and keys no query sees get zeros.
  const int64_t nk = p.Tk - j0 < kKeyTile ? p.Tk - j0 : kKeyTile;
  store_rows<kDim>(p.dk, b, h, j0, nk, p.D, dk, p.scale);
  store_rows<kDim>(p.dv, b, h, j0, nk, p.D, dv, 1.0f);
}

// 3. deterministic: a block per (query tile, head, batch) sums dq over the
//    key tiles in order, in registers.
template <int kDim>
__global__ __launch_bounds__(kThreads) void attention_backward_dq(Params p, int64_t query_tiles) {
  const int64_t tile = blockIdx.x % query_tiles, bh = blockIdx.x / query_tiles;
  const int64_t b = bh / p.H, h = bh % p.H, i0 = tile * kQueryTile;
  const int64_t nq = p.Tq - i0 < kQueryTile ? p.Tq - i0 : kQueryTile;
  const Tiles<kDim> t(dynamic_shared<float>());
  const HeadMask m = head_mask(p.mask, b, h, p.Tq, p.Tk);
  float dq[2][kDim / 8] = {};

  load_query_tile(p, t, b, h, i0);
  const int64_t key_tiles = tiles_of(visible_key_end(m, i0 + nq - 1), kKeyTile);
  for (int64_t kt = 0; kt < key_tiles; ++kt) {
    const int64_t j0 = kt * kKeyTile;
    __syncthreads();  // the previous tile's readers are done
    load_key_tile(p, t, b, h, j0, m.key_end);
    __syncthreads();
    score_gradients<kDim, false>(p, t, m, b, h, i0, j0);
    __syncthreads();
    accumulate_rows<kDim>(dq, t.ds, kScoreLd, 1, t.k);  // dq[i] += sum_j ds[i][j] k[j]
  }
  store_rows<kDim>(p.dq, b, h, i0, nq, p.D, dq, p.scale);
}

// Atomic path, last step: dq = scale * dq_accum, elementwise.
__global__ __launch_bounds__(256) void attention_backward_write_dq(Params p) {
  const int64_t n = p.B * p.H * p.Tq * p.D;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = e % p.D, row = e / p.D, i = row % p.Tq, bh = row / p.Tq, h = bh % p.H, b = bh / p.H;
    p.dq.data[b * p.dq.batch_stride + i * p.dq.seq_stride + h * p.dq.head_stride + d] = p.scale * p.dq_accum[e];
  }
}

Heads heads(ConstHeadsView x) { return {x.data, x.batch_stride, x.seq_stride, x.head_stride}; }
MutableHeads heads(HeadsView x) { return {x.data, x.batch_stride, x.seq_stride, x.head_stride}; }

template <int kDim>
void launch_tiles(const Params& p, bool deterministic, Stream stream) {
  constexpr size_t shared = Tiles<kDim>::bytes();
  if (p.Tk > 0) {
    const int64_t key_tiles = ceil_div(p.Tk, kKeyTile);
    auto kernel = deterministic ? attention_backward_key_tile<kDim, false> : attention_backward_key_tile<kDim, true>;
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)),
               "attention_backward: shared memory");
    SSL_CORE_LAUNCH(kernel, static_cast<unsigned>(key_tiles * p.B * p.H), kThreads, shared, stream, p, key_tiles);
    check_launch("attention_backward_key_tile");
  }
  if (deterministic && p.Tq > 0) {
    const int64_t query_tiles = ceil_div(p.Tq, kQueryTile);
    auto kernel = attention_backward_dq<kDim>;
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)),
               "attention_backward: shared memory");
    SSL_CORE_LAUNCH(kernel, static_cast<unsigned>(query_tiles * p.B * p.H), kThreads, shared, stream, p,
                    query_tiles);
    check_launch("attention_backward_dq");
  }
}

}  // namespace

void attention_backward(HeadsView dq, HeadsView dk, HeadsView dv, ConstHeadsView dout, ConstHeadsView q,
                        ConstHeadsView k, ConstHeadsView v, ConstHeadsView out, const float* lse,
                        const AttentionOptions& options, bool deterministic, Stream stream) {
  const int64_t B = q.batch, Tq = q.seq, H = q.heads, D = q.dim, Tk = k.seq;
  if (D > kMaxDim)
    throw std::invalid_argument("attention_backward: head_dim " + std::to_string(D) + " exceeds " +
                                std::to_string(kMaxDim));
  if (B == 0 || H == 0 || D == 0 || (Tq == 0 && Tk == 0)) return;
  if (ceil_div(Tk > Tq ? Tk : Tq, 32) * B * H > INT32_MAX)
    throw std::invalid_argument("attention_backward: too many tiles for one grid");

  Params p{};
  p.dq = heads(dq);
  p.dk = heads(dk);
  p.dv = heads(dv);
  p.dout = heads(dout);
  p.q = heads(q);
  p.k = heads(k);
  p.v = heads(v);
  p.out = heads(out);
  p.lse = lse;
  p.B = B;
  p.H = H;
  p.Tq = Tq;
  p.Tk = Tk;
  p.D = D;
  p.scale = options.scale;
  p.scale_log2 = options.scale * kLog2e;
  p.mask = make_device_mask(options.mask);
  p.dropout = make_device_dropout(options);

  // Scratch: delta, then (atomic path) the float32 dq accumulator.
  const int64_t rows = B * H * Tq;
  const int64_t scratch_floats = rows + (deterministic ? 0 : rows * D);
  float* scratch = nullptr;
  if (scratch_floats > 0)
    check_cuda(cudaMallocAsync(&scratch, static_cast<size_t>(scratch_floats) * sizeof(float),
                               static_cast<cudaStream_t>(stream)),
               "attention_backward: scratch");
  p.delta = scratch;
  p.dq_accum = deterministic || rows == 0 ? nullptr : scratch + rows;

  try {
    if (rows > 0) {
      SSL_CORE_LAUNCH(attention_backward_preprocess, static_cast<unsigned>(ceil_div(rows, 8)), 256, 0, stream, p);
      check_launch("attention_backward_preprocess");
    }
    if (D <= 16) {
      launch_tiles<16>(p, deterministic, stream);
    } else if (D <= 32) {
      launch_tiles<32>(p, deterministic, stream);
    } else if (D <= 64) {
      launch_tiles<64>(p, deterministic, stream);
    } else {
      launch_tiles<128>(p, deterministic, stream);
    }
    if (!deterministic && rows > 0) {
      const int64_t blocks = ceil_div(rows * D, 256);
      SSL_CORE_LAUNCH(attention_backward_write_dq, static_cast<unsigned>(blocks < 65535 ? blocks : 65535), 256, 0,
                      stream, p);
      check_launch("attention_backward_write_dq");
    }
  } catch (...) {
    if (scratch) cudaFreeAsync(scratch, static_cast<cudaStream_t>(stream));
    throw;
  }
  if (scratch)
    check_cuda(cudaFreeAsync(scratch, static_cast<cudaStream_t>(stream)), "attention_backward: scratch");
}

}  // namespace ssl_core::cuda
