// Attention forward on tensor cores, 16-bit inputs: out = softmax(q k^T *
// scale + mask) v and lse, for q, k, v and out in float16 or bfloat16 (passed
// as their bits), lse in float32 (+inf and a zero output row where no key is
// visible). Softmax and every accumulation are float32. Semantics exactly
// those of the float32 op: csrc/cpu/reference_attention.cpp; layout and masks:
// attention.h; dropout: philox.h (device version: philox.cuh).
//
// FlashAttention-2 (Dao 2023) with the two matrix products on tensor cores
// (nvcuda::wmma, m16n16k16, float accumulators): one block of 4 warps per
// (64-query tile, head, batch row), each warp owning 16 query rows. The Q
// tile stays in shared memory as 16-bit; K and V tiles of 64 keys stream
// through shared memory. Per key tile a warp computes
//   S (16 x 64)  = Q_w K^T   wmma, Q row-major matrix_a, K as col-major matrix_b
//   online softmax of S's rows in float32 (exp2 of scores pre-multiplied by
//                 scale * log2(e)); masks and dropout applied here
//   P (16 x 64)  = 16-bit probabilities in shared memory
//   O (16 x D)  += P V      wmma, V row-major matrix_b
// and divides O by the row sums only at the end (deferred normalization).
// The Tq x Tk scores never reach global memory.
//
// The output accumulator and its per-row rescaling. O lives in D/16 wmma
// accumulator fragments (registers, float32) for the whole key loop. The
// online softmax must multiply O's row r by exp2(m_old - m_new) of row r, but
// the fragment layout (which row and column fragment.x[i] is) is unspecified,
// and the emulator scrambles it on purpose. What IS specified is that every
// accumulator fragment of one shape and type has the same layout: loading a
// matrix with load_matrix_sync gives x[i] the same (row, column) as mma_sync's
// result (else c + a b could not work). So the warp writes its 16 row factors
// as a 16 x 16 float matrix F[r][c] = factor[r] into shared memory, loads it
// into an accumulator fragment and multiplies elementwise: O.x[i] *= F.x[i]
// scales every element by its own row's factor, whatever the layout. That
// costs 1 KB of shared memory a warp, 8 stores and one fragment load a lane
// per key tile (skipped, by a warp vote, when every factor is 1), against the
// alternative of storing, scaling and reloading all of O (16 x D floats)
// through shared memory every tile. The final 1/rowsum uses the same trick;
// then O goes out through shared memory (store_matrix_sync) to be converted
// to 16 bits and written with 8-byte stores along rows.
//
// Dropout's 1 / (1 - p) is folded into that final factor, so P holds
// probabilities in [0, 1] (no float16 overflow for p close to 1); a dropped
// weight is a 0 in P. The row sum is of the unrounded float32 probabilities
// before dropout (the softmax's own normalizer); P is rounded to 16 bits for
// the P V product, as in FlashAttention, which is the main error term against
// the float32 op (relative 2^-11 for float16, 2^-8 for bfloat16 a weight).
//
// Softmax threads: lane = 16 h + r owns row r of the warp's 16 and the 32 key
// columns 32 h .. 32 h + 31 of the tile, read as 8 float4 (conflict-free:
// the S tile's row stride of 68 floats puts the 8 rows of a quarter warp in
// distinct 16-byte bank groups). A row's two lanes are 16 apart: one
// xor-shuffle gives the row max, and the row sum stays per lane until the end
// (both lanes rescale by the same factor). Each group of four columns is one
// Philox call (philox.cuh), so dropout costs one Philox per 4 weights.
//
// Shared memory (16-bit rows padded by 8 elements = 16 bytes, so the rows
// that a wmma load reads together start in different banks; every wmma
// pointer is 32-byte aligned and every ldm a multiple of 16 bytes):
//   Q, K, V   3 x 64 x (kMaxD + 8) 16-bit
//   per warp  S 16 x 68 floats; P (16 x 72 16-bit) and F (16 x 16 floats)
//             alias S once the warp's scores are in registers
// kMaxD = 32: 32 KB; 64: 44 KB; 128: 68 KB, which needs the opt-in
// (cudaFuncSetAttribute) above 48 KB. ptxas (CUDA 13, sm_80 / sm_90, no
// spills) gives 94 / 128 / 164 registers a thread for kMaxD = 32 / 64 / 128,
// so blocks per SM, registers and shared memory together, are 4 / 3 / 2 on
// an A100 (164 KB shared; shared-bound) and 5 / 4 / 3 on an H100 (228 KB;
// register-bound): 8 to 20 warps, the usual flash-attention trade of O in
// registers for occupancy. Head dims are multiples of 16 up to 128; loops run
// to the actual D, so D = 48 in the 64 configuration costs only its own work.
//
// Masks: key tiles past the last key any query of the tile may see
// (key_lengths; causal diagonal aligned bottom-right; prefix) are never
// loaded, a warp skips tiles past its own rows' last visible key, and only
// tiles not wholly visible to a warp's rows pay the per-element test. Warps
// whose rows are all past Tq (short Tq) only help load. Lengths are clamped to
// [0, Tk] (device memory is not range-checked by the binding). The mask
// resolution and test, the parameters shared with the float32 kernel and
// their filling, and the block order are in attention_common.cuh.
//
// Not done: double-buffering K/V with cp.async (sm_80 PTX the emulator cannot
// run), keeping Q fragments in registers (D/16 more fragments a lane on top
// of O's), a 128-query tile (more registers per thread for O).
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "attention_common.cuh"
#include "common.cuh"
#include "philox.cuh"

namespace ssl_core::cuda {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kQueryTile = 16 * kWarps;  // Br
constexpr int kKeyTile = 64;             // Bc
constexpr int kSLd = kKeyTile + 4;       // floats per row of a warp's S tile
constexpr int kPLd = kKeyTile + 8;       // 16-bit elements per row of a warp's P tile
constexpr int kScratchBytes = 16 * kSLd * 4;           // per warp: S, or P and F
constexpr int kFactorOffset = 16 * kPLd * 2;           // F after P in the scratch
static_assert(kFactorOffset % 32 == 0 && kFactorOffset + 16 * 16 * 4 <= kScratchBytes, "F fits after P");
static_assert(kScratchBytes % 32 == 0, "scratch tiles stay 32-byte aligned");

struct Forward16Params : AttentionParams<uint16_t> {
  bool load_vectorized;   // q, k, v rows 16-byte aligned: 8 elements a load
  bool store_vectorized;  // out rows 8-byte aligned: 4 elements a store
};

template <int kMaxD>
struct Config {
  static constexpr int kLd = kMaxD + 8;  // 16-bit elements per row of Q, K, V
  static constexpr int kTileBytes = kQueryTile * kLd * 2;
  static_assert(kQueryTile == kKeyTile, "Q, K and V tiles share one shape");
  static_assert(kTileBytes % 32 == 0, "tiles stay 32-byte aligned");
  // + 32: the kernel aligns the dynamic shared memory's base to 32 bytes
  // (wmma pointers must be; a GPU gives at least that, the emulator 16).
  static constexpr int kSharedBytes = 3 * kTileBytes + kWarps * kScratchBytes + 32;
};

// Every element of an accumulator fragment times its row's factor: F is a
// 16 x 16 float matrix whose row r is factor[r] (see the header).
__device__ __forceinline__ void load_row_factors(wmma::fragment<wmma::accumulator, 16, 16, 16, float>& f,
                                                 float* F, float factor, int r, int h) {
  *reinterpret_cast<float4*>(F + r * 16 + 8 * h) = make_float4(factor, factor, factor, factor);
  *reinterpret_cast<float4*>(F + r * 16 + 8 * h + 4) = make_float4(factor, factor, factor, factor);
  __syncwarp();
  wmma::load_matrix_sync(f, F, 16, wmma::mem_row_major);
}

template <class T, int kMaxD>
__global__ void __launch_bounds__(kThreads) attention_forward_16bit_kernel(const Forward16Params p) {
  using C = Config<kMaxD>;
  constexpr int kLd = C::kLd, kFragments = kMaxD / 16;
  const float kMinusInf = -INFINITY;

  unsigned char* raw = dynamic_shared<unsigned char>();
  unsigned char* shared = raw + ((32 - (reinterpret_cast<uintptr_t>(raw) & 31)) & 31);
  uint16_t* Qbits = reinterpret_cast<uint16_t*>(shared);
  uint16_t* Kbits = Qbits + kQueryTile * kLd;
  uint16_t* Vbits = Kbits + kKeyTile * kLd;
  const T* Q = reinterpret_cast<const T*>(Qbits);
  const T* K = reinterpret_cast<const T*>(Kbits);
  const T* V = reinterpret_cast<const T*>(Vbits);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int r = lane & 15, h = lane >> 4;  // softmax: row r, key columns 32 h .. + 31
  unsigned char* scratch = shared + 3 * C::kTileBytes + warp * kScratchBytes;
  float* S = reinterpret_cast<float*>(scratch);
  T* P = reinterpret_cast<T*>(scratch);                         // over S, once S is in registers
  float* F = reinterpret_cast<float*>(scratch + kFactorOffset);  // row factors, over S too

  const auto [tile, head, b] = forward_block(p);
  const int64_t Tq = p.q_seq, Tk = p.k_seq;
  const int D = static_cast<int>(p.dim);
  const int64_t i0 = tile * kQueryTile;
  const int64_t warp_i0 = i0 + 16 * warp;  // the warp's first query
  const int64_t query = warp_i0 + r;       // this lane's softmax row
  const bool warp_active = warp_i0 < Tq;

  // The keys the block's and the warp's queries may see: [0, key_end), [0, warp_key_end).
  const HeadMask mask = head_mask(p.mask, b, head, Tq, Tk);
  const int64_t key_end = visible_key_end(mask, (i0 + kQueryTile < Tq ? i0 + kQueryTile : Tq) - 1);
  const int64_t warp_key_end = visible_key_end(mask, (warp_i0 + 16 < Tq ? warp_i0 + 16 : Tq) - 1);

  const int64_t* qs = p.q_stride;
  const int q_valid = static_cast<int>(Tq - i0 < kQueryTile ? Tq - i0 : kQueryTile);
  load_tile16<kKeyTile, kLd, kThreads>(Qbits, p.q + b * qs[0] + head * qs[2] + i0 * qs[1], qs[1], q_valid, D,
                                       p.load_vectorized);
  const uint16_t* k_head = p.k + b * p.k_stride[0] + head * p.k_stride[2];
  const uint16_t* v_head = p.v + b * p.v_stride[0] + head * p.v_stride[2];

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> o[kFragments];
#pragma unroll
  for (int f = 0; f < kFragments; ++f) wmma::fill_fragment(o[f], 0.0f);
  float row_max = kMinusInf, row_sum = 0.0f;  // row_sum: this lane's 32 columns of each tile

  for (int64_t j0 = 0; j0 < key_end; j0 += kKeyTile) {
    const int k_valid = static_cast<int>(key_end - j0 < kKeyTile ? key_end - j0 : kKeyTile);
    __syncthreads();  // every warp is done with the previous K and V (and Q is written)
    load_tile16<kKeyTile, kLd, kThreads>(Kbits, k_head + j0 * p.k_stride[1], p.k_stride[1], k_valid, D,
                                         p.load_vectorized);
    load_tile16<kKeyTile, kLd, kThreads>(Vbits, v_head + j0 * p.v_stride[1], p.v_stride[1], k_valid, D,
                                         p.load_vectorized);
    __syncthreads();
    if (!warp_active || j0 >= warp_key_end) continue;  // warp-uniform: nothing visible to these rows

    // S = Q_w K^T over the tile's 16-key column blocks that hold valid keys
    // (the others are masked below and never read as values).
    const int column_blocks = (k_valid + 15) / 16;
    {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> s[4];
#pragma unroll
      for (int n = 0; n < 4; ++n) wmma::fill_fragment(s[n], 0.0f);
      for (int d0 = 0; d0 < D; d0 += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::load_matrix_sync(a, Q + 16 * warp * kLd + d0, kLd);
#pragma unroll
        for (int n = 0; n < 4; ++n) {
          if (n >= column_blocks) break;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kt;  // kt(d, j) = K[j][d]
          wmma::load_matrix_sync(kt, K + 16 * n * kLd + d0, kLd);
          wmma::mma_sync(s[n], a, kt, s[n]);
        }
      }
#pragma unroll
      for (int n = 0; n < 4; ++n)
        if (n < column_blocks) wmma::store_matrix_sync(S + 16 * n, s[n], kSLd, wmma::mem_row_major);
    }
    __syncwarp();

    // This lane's 32 scores (log2 units), masked.
    float x[32];
#pragma unroll
    for (int g = 0; g < 8; ++g) {
      const float4 value = *reinterpret_cast<const float4*>(S + r * kSLd + 32 * h + 4 * g);
      x[4 * g + 0] = value.x * p.score_scale;
      x[4 * g + 1] = value.y * p.score_scale;
      x[4 * g + 2] = value.z * p.score_scale;
      x[4 * g + 3] = value.w * p.score_scale;
    }
    if (!keys_all_visible(mask, warp_i0, j0, kKeyTile)) {
#pragma unroll
      for (int c = 0; c < 32; ++c) {
        const int64_t key = j0 + 32 * h + c;
        if (!(query < Tq && may_attend(mask, query, key))) x[c] = kMinusInf;
      }
    }

    // Online softmax: the row's new max (two lanes, 16 apart), probabilities
    // relative to it, the old sum (and, below, O) rescaled to it.
    float tile_max = x[0];
#pragma unroll
    for (int c = 1; c < 32; ++c) tile_max = fmaxf(tile_max, x[c]);
    tile_max = fmaxf(tile_max, __shfl_xor_sync(kFullWarp, tile_max, 16));
    const float new_max = fmaxf(row_max, tile_max);
    const float shift = new_max == kMinusInf ? 0.0f : new_max;  // no visible key yet: keep zeros
    const float factor = row_max == kMinusInf ? 1.0f : exp2f(row_max - shift);  // O and the sum are 0 then
    row_max = new_max;
    float sum = 0.0f;
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      x[c] = exp2f(x[c] - shift);
      sum += x[c];
    }
    row_sum = row_sum * factor + sum;  // before dropout: the softmax's own normalizer

    if (p.dropout.enabled && query < Tq) {
#pragma unroll
      for (int g = 0; g < 8; ++g) {
        const PhiloxWords4 words = dropout_words(p.dropout, b, head, query, j0 + 32 * h + 4 * g);
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (words.w[e] < p.dropout.threshold) x[4 * g + e] = 0.0f;  // kept: scaled at the end
      }
    }

    __syncwarp();  // every lane has read its scores: P and F may overwrite S
#pragma unroll
    for (int g = 0; g < 8; ++g)
      *reinterpret_cast<Four<T>*>(P + r * kPLd + 32 * h + 4 * g) =
          four<T>(x[4 * g], x[4 * g + 1], x[4 * g + 2], x[4 * g + 3]);

    // O *= factor, row by row (skipped when no row's max moved).
    if (__any_sync(kFullWarp, factor != 1.0f)) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> row_factor;
      load_row_factors(row_factor, F, factor, r, h);  // syncs the warp: P is complete too
#pragma unroll
      for (int f = 0; f < kFragments; ++f)
        if (16 * f < D)
#pragma unroll
          for (int e = 0; e < row_factor.num_elements; ++e) o[f].x[e] *= row_factor.x[e];
    } else {
      __syncwarp();  // P is complete
    }

    // O += P V over the 16-key blocks that hold valid keys.
    for (int k0 = 0; k0 < k_valid; k0 += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
      wmma::load_matrix_sync(a, P + k0, kPLd);
#pragma unroll
      for (int f = 0; f < kFragments; ++f) {
        if (16 * f >= D) break;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vb;
        wmma::load_matrix_sync(vb, V + k0 * kLd + 16 * f, kLd);
        wmma::mma_sync(o[f], a, vb, o[f]);
      }
    }
  }
  if (!warp_active) return;  // no barrier follows

  // Deferred normalization: the row sums of both lanes of a row.
  const float total = row_sum + __shfl_xor_sync(kFullWarp, row_sum, 16);
  if (h == 0 && query < Tq && p.lse) p.lse[(b * p.heads + head) * Tq + query] = row_lse(row_max, total);
  const float inverse = total > 0.0f ? p.dropout.keep_scale / total : 0.0f;
  __syncwarp();  // the last P V loads are done with the scratch
  {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> row_factor;
    load_row_factors(row_factor, F, inverse, r, h);
#pragma unroll
    for (int f = 0; f < kFragments; ++f)
#pragma unroll
      for (int e = 0; e < row_factor.num_elements; ++e) o[f].x[e] *= row_factor.x[e];
  }
  __syncwarp();  // F is loaded: O may overwrite it

  // O out through S, 64 columns (4 fragments) at a time, 4 elements a store.
  const int64_t* os = p.out_stride;
  uint16_t* out_head = p.out + b * os[0] + head * os[2];
#pragma unroll
  for (int f = 0; f < kFragments; ++f) {
    if (16 * f < D) wmma::store_matrix_sync(S + 16 * (f & 3), o[f], kSLd, wmma::mem_row_major);
    if ((f & 3) == 3 || f == kFragments - 1) {
      __syncwarp();
      const int c0 = 16 * (f & ~3);
      const int width = D - c0 < 64 ? D - c0 : 64;
      const int groups = width > 0 ? width / 4 : 0;  // of 4 columns, per row
      for (int item = lane; item < 16 * groups; item += 32) {
        const int row = item / groups, col = (item - row * groups) * 4;
        const int64_t i = warp_i0 + row;
        if (i >= Tq) continue;
        const float4 value = *reinterpret_cast<const float4*>(S + row * kSLd + col);
        const Four<T> packed = four<T>(value.x, value.y, value.z, value.w);
        T* dst = reinterpret_cast<T*>(out_head + i * os[1] + c0 + col);
        if (p.store_vectorized) {
          *reinterpret_cast<Four<T>*>(dst) = packed;
        } else {
          dst[0] = packed.v[0];
          dst[1] = packed.v[1];
          dst[2] = packed.v[2];
          dst[3] = packed.v[3];
        }
      }
      __syncwarp();  // S is read before the next fragments overwrite it
    }
  }
}

template <class T, int kMaxD>
void launch(Forward16Params params, Stream stream) {
  using C = Config<kMaxD>;
  params.query_tiles = ceil_div(params.q_seq, kQueryTile);
  const unsigned blocks = forward_blocks(params, "attention_forward_16bit");
  auto kernel = attention_forward_16bit_kernel<T, kMaxD>;
  if (C::kSharedBytes > 48 * 1024)
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSharedBytes),
               "attention_forward_16bit: opting in to shared memory above 48 KB");
  SSL_CORE_LAUNCH(kernel, blocks, kThreads, C::kSharedBytes, stream, params);
  check_launch("attention_forward_16bit");
}

template <class T>
void launch_for_dim(const Forward16Params& params, Stream stream) {
  if (params.dim <= 32)
    launch<T, 32>(params, stream);
  else if (params.dim <= 64)
    launch<T, 64>(params, stream);
  else
    launch<T, 128>(params, stream);
}

}  // namespace

void attention_forward_16bit(HeadsViewT<uint16_t> out, float* lse, HeadsViewT<const uint16_t> q,
                             HeadsViewT<const uint16_t> k, HeadsViewT<const uint16_t> v, HalfType type,
                             const AttentionOptions& options, Stream stream) {
  const int64_t D = q.dim;
  if (q.batch == 0 || q.heads == 0 || q.seq == 0) return;
  if (D < 16 || D > 128 || D % 16 != 0)
    throw std::invalid_argument("attention_forward_16bit: head_dim must be a multiple of 16 in [16, 128], got " +
                                std::to_string(D));
  Forward16Params p{};
  fill_attention_params(p, out, lse, q, k, v, options);
  p.load_vectorized = rows_aligned(q, 16) && rows_aligned(k, 16) && rows_aligned(v, 16);
  p.store_vectorized = rows_aligned(out, 8);

  if (type == HalfType::float16)
    launch_for_dim<__half>(p, stream);
  else
    launch_for_dim<__nv_bfloat16>(p, stream);
}

}  // namespace ssl_core::cuda
