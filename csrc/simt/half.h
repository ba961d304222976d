// The 16-bit float types of cuda_fp16.h and cuda_bf16.h, for the emulator:
// storage and the conversions (round to nearest even), which is what our
// kernels use; they load 16-bit values, compute in float32 and store back.
// Half arithmetic operators are deliberately missing.
#pragma once

#include <math.h>

#include <cstdint>
#include <cstring>

struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};
using half = __half;

namespace simt {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace simt

inline __half __float2half_rn(float value) {
  uint32_t f = simt::float_bits(value);
  const uint16_t sign = static_cast<uint16_t>((f >> 16) & 0x8000u);
  f &= 0x7fffffffu;
  if (f >= 0x7f800000u) return {static_cast<uint16_t>(sign | (f > 0x7f800000u ? 0x7e00u : 0x7c00u))};
  if (f >= 0x477ff000u) return {static_cast<uint16_t>(sign | 0x7c00u)};  // 65520 and above round to inf
  if (f < 0x38800000u) {  // below 2^-14: a subnormal half, in units of 2^-24
    return {static_cast<uint16_t>(sign | static_cast<uint16_t>(nearbyintf(simt::bits_float(f) * 16777216.0f)))};
  }
  f += 0x0fffu + ((f >> 13) & 1u);  // round the 13 dropped bits to nearest even
  return {static_cast<uint16_t>(sign | ((f - (112u << 23)) >> 13))};
}

inline __half __float2half(float value) { return __float2half_rn(value); }

inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exponent = (h.bits >> 10) & 0x1fu, mantissa = h.bits & 0x3ffu;
  if (exponent == 0) {
    const float magnitude = static_cast<float>(mantissa) * (1.0f / 16777216.0f);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return simt::bits_float(sign | 0x7f800000u | mantissa << 13);
  return simt::bits_float(sign | (exponent + 112u) << 23 | mantissa << 13);
}

inline __nv_bfloat16 __float2bfloat16_rn(float value) {
  const uint32_t f = simt::float_bits(value);
  if ((f & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((f >> 16) | 0x40u)};  // quiet NaN
  return {static_cast<uint16_t>((f + 0x7fffu + ((f >> 16) & 1u)) >> 16)};
}

inline __nv_bfloat16 __float2bfloat16(float value) { return __float2bfloat16_rn(value); }
inline float __bfloat162float(__nv_bfloat16 b) { return simt::bits_float(static_cast<uint32_t>(b.bits) << 16); }
