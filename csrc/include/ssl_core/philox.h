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

inline PhiloxBlocks philox4x32(PhiloxLanes c0, PhiloxLanes c1, PhiloxLanes c2, PhiloxLanes c3,
                               uint64_t key) {
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < kPhiloxRounds; ++round) {
    const PhiloxWide p0 = __builtin_convertvector(c0, PhiloxWide) * uint64_t{kPhiloxMultiplier0};
    const PhiloxWide p1 = __builtin_convertvector(c2, PhiloxWide) * uint64_t{kPhiloxMultiplier1};
    const PhiloxLanes hi0 = __builtin_convertvector(p0 >> 32, PhiloxLanes);
    const PhiloxLanes hi1 = __builtin_convertvector(p1 >> 32, PhiloxLanes);
    const PhiloxLanes lo0 = c0 * kPhiloxMultiplier0, lo1 = c2 * kPhiloxMultiplier1;
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
