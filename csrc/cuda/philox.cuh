// Philox4x32-10 on the device, and the attention dropout convention of
// csrc/include/ssl_core/philox.h (the specification; the CPU kernels and the
// reference use the same words, so a seed drops the same weights everywhere):
// the weight of query i on key j in batch b, head h is dropped iff
//   philox(counter = {j / 4, i, h, b}, key = {seed low, seed high})[j % 4]
//     < threshold = floor(p * 2^32),
// and a kept weight is multiplied by keep_scale = float(1 / (1 - p)).
//
// One call gives the words of four consecutive keys j = 4c .. 4c + 3, so a
// thread that owns four adjacent key columns (or tests them in groups of four)
// pays one Philox per four weights. The ten rounds are two 32x32->64
// multiplies each (__umulhi + a plain multiply), all in registers.
//
// Used by the three attention kernels (float32 and 16-bit forward, backward);
// the backward regenerates the forward's mask from (seed, b, h, i, j) without storing it.
#pragma once

#include <cmath>
#include <cstdint>

#include "common.cuh"
#include "ssl_core/attention.h"

namespace ssl_core::cuda {

struct PhiloxWords4 {
  uint32_t w[4];
};

__device__ __forceinline__ PhiloxWords4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                                      uint64_t key) {
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

// The dropout parameters a kernel receives by value (built on the host).
struct DeviceDropout {
  bool enabled;
  uint32_t threshold;  // a weight is dropped iff its word < threshold
  float keep_scale;    // 1 / (1 - p), rounded to float
  uint64_t seed;
};

inline DeviceDropout make_device_dropout(const AttentionOptions& options) {
  const double p = options.dropout_p;
  DeviceDropout d;
  d.enabled = p > 0.0;
  d.threshold = d.enabled ? static_cast<uint32_t>(std::floor(p * 4294967296.0)) : 0u;  // p < 1: fits
  d.keep_scale = static_cast<float>(1.0 / (1.0 - p));
  d.seed = options.seed;
  return d;
}

// The four Philox words of keys 4 * (j / 4) .. + 3 for query i of head (b, h).
__device__ __forceinline__ PhiloxWords4 dropout_words(const DeviceDropout& d, int64_t b, int64_t h, int64_t i,
                                                      int64_t j) {
  return philox4x32_10(static_cast<uint32_t>(j >> 2), static_cast<uint32_t>(i), static_cast<uint32_t>(h),
                       static_cast<uint32_t>(b), d.seed);
}

// Word k (0..3) of a block, by selects: a dynamic index into w[] would put
// the block in local memory.
__device__ __forceinline__ uint32_t philox_word(const PhiloxWords4& words, int k) {
  return k == 0 ? words.w[0] : k == 1 ? words.w[1] : k == 2 ? words.w[2] : words.w[3];
}

// The factor of weight (b, h, i, j): 0 (dropped) or keep_scale. One Philox
// per call; prefer dropout_words when a thread handles 4 aligned keys.
__device__ __forceinline__ float dropout_factor(const DeviceDropout& d, int64_t b, int64_t h, int64_t i,
                                                int64_t j) {
  const PhiloxWords4 words = dropout_words(d, b, h, i, j);
  return philox_word(words, static_cast<int>(j & 3)) >= d.threshold ? d.keep_scale : 0.0f;
}

}  // namespace ssl_core::cuda
