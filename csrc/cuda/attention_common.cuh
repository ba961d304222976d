// What the attention kernel files (attention_forward.cu,
// attention_forward_16bit.cu, attention_backward.cu) share, in one place so
// that they cannot drift apart on the mask semantics of attention.h or on
// how the forward kernels are parameterized:
//   - DeviceMask, the masks as a kernel receives them, and HeadMask, the
//     same resolved for one (batch, head): lengths clamped to [0, Tk] (they
//     come from device memory, which the bindings do not range-check), the
//     per-element visibility test, and the key ranges of query tiles;
//   - AttentionParams<T> (T = float, or uint16_t for the bits of a 16-bit
//     type), the parameters common to both forward kernels, filled from the
//     views and options by one host function; the forward grid (a block per
//     query tile, head and batch row) and its block order; the natural lse
//     of a row; the row-alignment test behind vector loads and stores.
#pragma once

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "philox.cuh"

namespace ssl_core::cuda {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// The masks of AttentionOptions (attention.h), passed to a kernel by value.
struct DeviceMask {
  bool causal;
  const int64_t* key_lengths;     // device, (B,) or null
  const int64_t* prefix_lengths;  // device, (B,) or null
  const uint8_t* bits;            // device, or null
  int64_t strides[4];             // (b, h, i, j) in bytes; 0 broadcasts
};

inline DeviceMask make_device_mask(const AttentionMask& m) {
  DeviceMask d{};
  d.causal = m.causal;
  d.key_lengths = m.key_lengths;
  d.prefix_lengths = m.prefix_lengths;
  d.bits = m.mask;
  for (int a = 0; a < 4; ++a) d.strides[a] = m.mask_strides[a];
  return d;
}

// The masks resolved for one (batch, head).
struct HeadMask {
  int64_t key_end;      // keys >= key_end are padding: key_lengths[b] or Tk
  int64_t prefix;       // prefix_lengths[b], or 0
  int64_t diagonal;     // Tk - Tq: query i sees keys j <= i + diagonal (bottom-right aligned)
  bool structured;      // causal or prefix
  const uint8_t* bits;  // explicit mask at (b, h), or null
  int64_t bits_query_stride, bits_key_stride;
};

__device__ __forceinline__ int64_t clamp_length(int64_t n, int64_t Tk) { return n < 0 ? 0 : n > Tk ? Tk : n; }

__device__ __forceinline__ HeadMask head_mask(const DeviceMask& d, int64_t b, int64_t h, int64_t Tq, int64_t Tk) {
  HeadMask m;
  m.key_end = d.key_lengths ? clamp_length(d.key_lengths[b], Tk) : Tk;
  m.prefix = d.prefix_lengths ? clamp_length(d.prefix_lengths[b], Tk) : 0;
  m.diagonal = Tk - Tq;
  m.structured = d.causal || d.prefix_lengths != nullptr;
  m.bits = d.bits ? d.bits + b * d.strides[0] + h * d.strides[1] : nullptr;
  m.bits_query_stride = d.strides[2];
  m.bits_key_stride = d.strides[3];
  return m;
}

// May query i attend to key j (both in range)?
__device__ __forceinline__ bool may_attend(const HeadMask& m, int64_t i, int64_t j) {
  if (j >= m.key_end) return false;
  if (m.structured && j > i + m.diagonal && j >= m.prefix) return false;
  return !m.bits || m.bits[i * m.bits_query_stride + j * m.bits_key_stride] != 0;
}

// Keys that some query in [0, last_query] may see lie below this.
__device__ __forceinline__ int64_t visible_key_end(const HeadMask& m, int64_t last_query) {
  int64_t end = m.key_end;
  if (m.structured) {
    const int64_t diagonal = last_query + m.diagonal + 1;
    const int64_t reach = diagonal > m.prefix ? diagonal : m.prefix;
    if (reach < end) end = reach;
  }
  return end > 0 ? end : 0;
}

// Do all queries from first_query on see every key of [j0, j0 + n), so that
// the tile needs no per-element test (queries past Tq aside)?
__device__ __forceinline__ bool keys_all_visible(const HeadMask& m, int64_t first_query, int64_t j0, int64_t n) {
  return j0 + n <= m.key_end && !m.bits &&
         (!m.structured || j0 + n - 1 <= first_query + m.diagonal || j0 + n <= m.prefix);
}

// lse of a row from its running max (log2 units, of pre-multiplied scores)
// and sum: the natural log-sum-exp, +inf where no key is visible.
__device__ __forceinline__ float row_lse(float max_log2, float sum) {
  return sum > 0.0f ? (max_log2 + log2f(sum)) * kLn2 : INFINITY;
}

// The parameters both forward kernels receive (each adds its own flags).
template <class T>
struct AttentionParams {
  T* out;
  float* lse;  // (B, H, Tq), or null
  const T* q;
  const T* k;
  const T* v;
  int64_t batch, heads, q_seq, k_seq, dim;
  // (batch, seq, head) element strides
  int64_t q_stride[3], k_stride[3], v_stride[3], out_stride[3];
  DeviceMask mask;
  float score_scale;  // scale * log2(e)
  DeviceDropout dropout;
  int64_t query_tiles;  // set by the launcher: ceil(Tq / its query tile)
};

// Everything of p but query_tiles (and a derived struct's own fields).
template <class T>
void fill_attention_params(AttentionParams<T>& p, HeadsViewT<T> out, float* lse, HeadsViewT<const T> q,
                           HeadsViewT<const T> k, HeadsViewT<const T> v, const AttentionOptions& options) {
  p.out = out.data;
  p.lse = lse;
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.batch = q.batch;
  p.heads = q.heads;
  p.q_seq = q.seq;
  p.k_seq = k.seq;
  p.dim = q.dim;
  const int64_t qs[3] = {q.batch_stride, q.seq_stride, q.head_stride};
  const int64_t ks[3] = {k.batch_stride, k.seq_stride, k.head_stride};
  const int64_t vs[3] = {v.batch_stride, v.seq_stride, v.head_stride};
  const int64_t os[3] = {out.batch_stride, out.seq_stride, out.head_stride};
  for (int a = 0; a < 3; ++a) {
    p.q_stride[a] = qs[a];
    p.k_stride[a] = ks[a];
    p.v_stride[a] = vs[a];
    p.out_stride[a] = os[a];
  }
  p.mask = make_device_mask(options.mask);
  p.score_scale = options.scale * kLog2e;
  p.dropout = make_device_dropout(options);
}

// The forward grid: query_tiles x heads x batch blocks, checked against the
// grid limit.
template <class T>
unsigned forward_blocks(const AttentionParams<T>& p, const char* kernel) {
  const int64_t blocks = p.query_tiles * p.heads * p.batch;
  if (blocks > 0x7fffffff)
    throw std::runtime_error(std::string(kernel) + ": " + std::to_string(blocks) +
                             " blocks (query tiles x heads x batch) exceed the grid limit of 2^31 - 1");
  return static_cast<unsigned>(blocks);
}

// Block -> (query tile, head, batch row), query tiles last to first, so
// that the longest causal tiles start first.
struct ForwardBlock {
  int64_t tile, head, batch;
};

template <class T>
__device__ __forceinline__ ForwardBlock forward_block(const AttentionParams<T>& p) {
  const int64_t block = blockIdx.x;
  const int64_t bh = block / p.query_tiles;
  return {p.query_tiles - 1 - block % p.query_tiles, bh % p.heads, bh / p.heads};
}

// Every row of x starts on a multiple of `bytes` (a power of two): rows can
// be read or written in pieces of that size.
template <class T>
bool rows_aligned(const HeadsViewT<T>& x, int64_t bytes) {
  const int64_t size = sizeof(T);
  return reinterpret_cast<uintptr_t>(x.data) % bytes == 0 && x.batch_stride * size % bytes == 0 &&
         x.seq_stride * size % bytes == 0 && x.head_stride * size % bytes == 0;
}

// Rows [0, kRows) of a 16-bit tile into shared memory with kLd elements a
// row (rows from `valid` on as zeros), columns [0, D), D a multiple of 8: the
// kThreads threads of the block copy consecutive 16-byte pieces, loaded as
// one uint4 when `vectorized` (every row 16-byte aligned).
template <int kRows, int kLd, int kThreads>
__device__ __forceinline__ void load_tile16(uint16_t* dst, const uint16_t* src, int64_t seq_stride, int valid,
                                            int D, bool vectorized) {
  const int pieces_per_row = D / 8;
  for (int piece = threadIdx.x; piece < kRows * pieces_per_row; piece += kThreads) {
    const int row = piece / pieces_per_row, col = (piece - row * pieces_per_row) * 8;
    uint4 value = make_uint4(0u, 0u, 0u, 0u);
    if (row < valid) {
      const uint16_t* p = src + row * seq_stride + col;
      if (vectorized) {
        value = *reinterpret_cast<const uint4*>(p);
      } else {
        value.x = p[0] | static_cast<unsigned>(p[1]) << 16;
        value.y = p[2] | static_cast<unsigned>(p[3]) << 16;
        value.z = p[4] | static_cast<unsigned>(p[5]) << 16;
        value.w = p[6] | static_cast<unsigned>(p[7]) << 16;
      }
    }
    *reinterpret_cast<uint4*>(dst + row * kLd + col) = value;
  }
}

}  // namespace ssl_core::cuda
