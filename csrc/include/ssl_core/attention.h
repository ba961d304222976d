// Views and options of the attention kernels (csrc/cpu/attention_*.cpp).
//
// Tensors are (B, T, H, D) like FlashAttention's: what a fused QKV projection
// produces without transposes. Only the head dimension must be contiguous, so
// q, k and v may be slices of one (B, T, 3, H, D) array.
#pragma once

#include <cstdint>

namespace ssl_core {

template <class T>
struct HeadsViewT {
  T* data = nullptr;
  int64_t batch = 0, seq = 0, heads = 0, dim = 0;
  int64_t batch_stride = 0, seq_stride = 0, head_stride = 0;  // in elements

  // The first of `seq` rows of head (b, h); rows are seq_stride apart.
  T* head(int64_t b, int64_t h) const { return data + b * batch_stride + h * head_stride; }
};

using HeadsView = HeadsViewT<float>;
using ConstHeadsView = HeadsViewT<const float>;

inline ConstHeadsView as_const(const HeadsView& v) {
  return {v.data, v.batch, v.seq, v.heads, v.dim, v.batch_stride, v.seq_stride, v.head_stride};
}

// Which keys j each query i may attend to (for batch b, head h): all of
//   j < key_lengths[b]                                   (padding; if given)
//   mask[b, h, i, j]                                      (explicit; if given)
//   j <= i + Tk - Tq  or  j < prefix_lengths[b]           (if causal or prefix_lengths)
// The causal diagonal is aligned bottom-right, so the last query sees every
// key when Tq != Tk (decoding with a cache). A prefix makes the causal mask
// bidirectional over its first keys: the UniLM / prefix-LM mask.
struct AttentionMask {
  bool causal = false;
  const int64_t* key_lengths = nullptr;     // (B,) in [0, Tk], or null
  const int64_t* prefix_lengths = nullptr;  // (B,) in [0, Tk], or null
  const uint8_t* mask = nullptr;            // bool, or null
  int64_t mask_strides[4] = {0, 0, 0, 0};   // (b, h, i, j) in bytes; 0 broadcasts
};

struct AttentionOptions {
  AttentionMask mask;
  float scale = 1.0f;       // scores are scale * q.k
  double dropout_p = 0.0;   // in [0, 1): probability of dropping an attention weight
  uint64_t seed = 0;        // Philox key of the dropout mask (philox.h)
};

}  // namespace ssl_core
