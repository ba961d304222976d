// Philox4x32-10 (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as
// easy as 1, 2, 3", SC 2011): a counter-based generator. Four 32-bit words
// come from hashing a 128-bit counter with a 64-bit key in ten rounds, so any
// word can be computed on its own, in any order, on any thread. Attention
// dropout uses that to regenerate in backward exactly the mask of forward
// without storing it.
//
// Dropout convention (the specification, shared by every implementation):
// the weight of query i on key j in batch b, head h is dropped iff
//   philox(counter = {j / 4, i, h, b}, key = {seed low, seed high})[j % 4]
//     < dropout_threshold(p) = floor(p * 2^32),
// so it is kept with probability 1 - p to within 2^-32.
#pragma once

#include <cstdint>

namespace ssl_core {

constexpr uint32_t kPhiloxMultiplier0 = 0xD2511F53u, kPhiloxMultiplier1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxWeyl0 = 0x9E3779B9u, kPhiloxWeyl1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;

struct PhiloxWords { uint32_t w[4]; };

// One block of four words (scalar; compiled once, in philox.cpp).
PhiloxWords philox4x32(const uint32_t counter[4], uint64_t key);
uint32_t dropout_threshold(double p);  // p in [0, 1)

}  // namespace ssl_core

#ifdef SSL_CORE_ISA
#include "ssl_core/simd.h"

namespace ssl_core::cpu::SSL_CORE_ISA {

// kWidth Philox blocks at once, one a lane: GCC/Clang vector extensions,
// which the compiler maps onto whatever integer SIMD the file is built for.
typedef uint32_t PhiloxLanes __attribute__((vector_size(kWidth * sizeof(uint32_t))));
typedef uint64_t PhiloxWide __attribute__((vector_size(kWidth * sizeof(uint64_t))));

struct PhiloxBlocks { PhiloxLanes w[4]; };

// The high and low 32 bits of m * x in every lane. Written out for AVX-512
// and AVX2 with the even/odd-lane 32x32->64 multiply: left to the vector
// extensions, the compiler widens to 64-bit lanes and uses a full 64-bit
// multiply, several times dearer.
inline void mul_hi_lo(PhiloxLanes x, uint32_t m, PhiloxLanes& hi, PhiloxLanes& lo) {
#if defined(__AVX512F__)
  const __m512i a = (__m512i)x, mv = _mm512_set1_epi32(static_cast<int>(m));
  const __m512i even = _mm512_mul_epu32(a, mv), odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), mv);
  hi = (PhiloxLanes)_mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  lo = (PhiloxLanes)_mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
#elif defined(__AVX2__)
  const __m256i a = (__m256i)x, mv = _mm256_set1_epi32(static_cast<int>(m));
  const __m256i even = _mm256_mul_epu32(a, mv), odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), mv);
  hi = (PhiloxLanes)_mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = (PhiloxLanes)_mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
#else
  const PhiloxWide product = __builtin_convertvector(x, PhiloxWide) * uint64_t{m};
  hi = __builtin_convertvector(product >> 32, PhiloxLanes);
  lo = x * m;
#endif
}

inline PhiloxBlocks philox4x32(PhiloxLanes c0, PhiloxLanes c1, PhiloxLanes c2, PhiloxLanes c3,
                               uint64_t key) {
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < kPhiloxRounds; ++round) {
    PhiloxLanes hi0, lo0, hi1, lo1;
    mul_hi_lo(c0, kPhiloxMultiplier0, hi0, lo0);
    mul_hi_lo(c2, kPhiloxMultiplier1, hi1, lo1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxWeyl0;
    k1 += kPhiloxWeyl1;
  }
  return {{c0, c1, c2, c3}};
}

}  // namespace ssl_core::cpu::SSL_CORE_ISA
#endif
