// Scalar Philox4x32-10 (see philox.h): the reference attention and the tests'
// known-answer check use it; the fast kernels use the vector form.
#include "ssl_core/philox.h"

#include <cmath>

namespace ssl_core {

PhiloxWords philox4x32(const uint32_t counter[4], uint64_t key) {
  uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < kPhiloxRounds; ++round) {
    const uint64_t p0 = uint64_t{kPhiloxMultiplier0} * c0, p1 = uint64_t{kPhiloxMultiplier1} * c2;
    c0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    c1 = static_cast<uint32_t>(p1);
    c2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c3 = static_cast<uint32_t>(p0);
    k0 += kPhiloxWeyl0;
    k1 += kPhiloxWeyl1;
  }
  return {{c0, c1, c2, c3}};
}

uint32_t dropout_threshold(double p) {
  return static_cast<uint32_t>(std::floor(p * 4294967296.0));  // p < 1: fits
}

}  // namespace ssl_core
