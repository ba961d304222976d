// A small SIMD vocabulary for the fast CPU kernels: one float vector type and
// the handful of operations the kernels need, implemented for AVX-512 (16
// lanes), AVX2+FMA (8 lanes) and portable GCC/Clang vector extensions (4
// lanes, SSE2 or NEON). Which one a file gets depends on the flags it is
// compiled with (CMakeLists.txt compiles each kernel file once per set).
//
// load_bf16 widens bfloat16 weights (uint16 bits) to float32 lanes.
//
// Everything lives in namespace ssl_core::cpu::SSL_CORE_ISA so that the three
// compilations of the same inline code can never be merged by the linker:
// an AVX-512 copy of a helper must not end up called from the portable path.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#ifndef SSL_CORE_ISA
#error "SSL_CORE_ISA must name the instruction set this file is compiled for"
#endif

namespace ssl_core::cpu::SSL_CORE_ISA {

#if defined(__AVX512F__)
// ---------------------------------------------------------------- AVX-512 --
constexpr int kWidth = 16;
struct Vec { __m512 v; };
using Mask = __mmask16;

inline Mask first_lanes(int n) { return static_cast<Mask>((1u << n) - 1u); }
inline Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
inline Vec load(const float* p, int n) { return {_mm512_maskz_loadu_ps(first_lanes(n), p)}; }
inline void store(float* p, Vec a) { _mm512_storeu_ps(p, a.v); }
inline void store(float* p, Vec a, int n) { _mm512_mask_storeu_ps(p, first_lanes(n), a.v); }
// Non-temporal store to a 64-byte aligned address: skips reading the line first.
inline void stream(float* p, Vec a) { _mm512_stream_ps(p, a.v); }
inline void stream_fence() { _mm_sfence(); }
inline Vec splat(float x) { return {_mm512_set1_ps(x)}; }
inline Vec operator+(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
inline Vec operator-(Vec a, Vec b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline Vec operator*(Vec a, Vec b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline Vec fma(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline Vec abs(Vec a) { return {_mm512_abs_ps(a.v)}; }
inline Vec operator/(Vec a, Vec b) { return {_mm512_div_ps(a.v, b.v)}; }
inline Vec sqrt(Vec a) { return {_mm512_sqrt_ps(a.v)}; }
// 1/a to within 1 ulp for finite, nonzero a (0 and inf give NaN here): a
// 14-bit estimate and one Newton step, much cheaper than vdivps.
inline Vec reciprocal(Vec a) {
  const __m512 r = _mm512_rcp14_ps(a.v);
  return {_mm512_fmadd_ps(r, _mm512_fnmadd_ps(a.v, r, _mm512_set1_ps(1.0f)), r)};
}
inline float reduce_add(Vec a) { return _mm512_reduce_add_ps(a.v); }
// min/max return `a` when either is NaN (vminps returns its second operand then).
inline Vec min(Vec a, Vec b) { return {_mm512_min_ps(b.v, a.v)}; }
inline Vec max(Vec a, Vec b) { return {_mm512_max_ps(b.v, a.v)}; }
inline Mask less(Vec a, Vec b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ); }
inline Mask greater(Vec a, Vec b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_GT_OQ); }
inline Mask not_less(Vec a, Vec b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_NLT_UQ); }
// Lanes of `a` where `m` is set, of `b` elsewhere.
inline Vec select(Mask m, Vec a, Vec b) { return {_mm512_mask_blend_ps(m, b.v, a.v)}; }
// a * 2^n for integral n; vscalefps gets overflow, underflow and subnormals right.
inline Vec ldexp(Vec a, Vec n) { return {_mm512_scalef_ps(a.v, n.v)}; }
// bfloat16 bits (the high half of a float32) widened to float32, exactly.
inline Vec load_bf16(const uint16_t* p) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16))};
}
inline Vec load_bf16(const uint16_t* p, int n) {
  const __m256i bits = _mm256_maskz_loadu_epi16(first_lanes(n), p);
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16))};
}

#elif defined(__AVX2__) && defined(__FMA__)
// ------------------------------------------------------------- AVX2 + FMA --
constexpr int kWidth = 8;
struct Vec { __m256 v; };
using Mask = __m256;  // all-ones lanes are true

inline __m256i lane_mask_bits(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline Mask first_lanes(int n) { return _mm256_castsi256_ps(lane_mask_bits(n)); }
inline Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
inline Vec load(const float* p, int n) { return {_mm256_maskload_ps(p, lane_mask_bits(n))}; }
inline void store(float* p, Vec a) { _mm256_storeu_ps(p, a.v); }
inline void store(float* p, Vec a, int n) { _mm256_maskstore_ps(p, lane_mask_bits(n), a.v); }
inline void stream(float* p, Vec a) { _mm256_stream_ps(p, a.v); }
inline void stream_fence() { _mm_sfence(); }
inline Vec splat(float x) { return {_mm256_set1_ps(x)}; }
inline Vec operator+(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
inline Vec operator-(Vec a, Vec b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline Vec operator*(Vec a, Vec b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline Vec fma(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline Vec abs(Vec a) { return {_mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v)}; }
inline Vec operator/(Vec a, Vec b) { return {_mm256_div_ps(a.v, b.v)}; }
inline Vec sqrt(Vec a) { return {_mm256_sqrt_ps(a.v)}; }
inline Vec reciprocal(Vec a) { return {_mm256_div_ps(_mm256_set1_ps(1.0f), a.v)}; }
inline float reduce_add(Vec a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline Vec min(Vec a, Vec b) { return {_mm256_min_ps(b.v, a.v)}; }  // a when NaN
inline Vec max(Vec a, Vec b) { return {_mm256_max_ps(b.v, a.v)}; }
inline Mask less(Vec a, Vec b) { return _mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ); }
inline Mask greater(Vec a, Vec b) { return _mm256_cmp_ps(a.v, b.v, _CMP_GT_OQ); }
inline Mask not_less(Vec a, Vec b) { return _mm256_cmp_ps(a.v, b.v, _CMP_NLT_UQ); }
inline Vec select(Mask m, Vec a, Vec b) { return {_mm256_blendv_ps(b.v, a.v, m)}; }
// a * 2^n for integral n in [-252, 254], in two exact steps so that results
// down to the subnormal range and up to overflow come out right.
inline Vec load_bf16(const uint16_t* p) {
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16))};
}
inline Vec load_bf16(const uint16_t* p, int n) {
  uint16_t lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::memcpy(lanes, p, sizeof(uint16_t) * n);
  return load_bf16(lanes);
}
inline Vec ldexp(Vec a, Vec n) {
  __m256i k = _mm256_cvtps_epi32(n.v);
  __m256i half = _mm256_srai_epi32(k, 1);
  __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, _mm256_set1_epi32(127)), 23));
  __m256 s2 = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(k, half), _mm256_set1_epi32(127)), 23));
  return {_mm256_mul_ps(_mm256_mul_ps(a.v, s1), s2)};
}

#else
// -------------------------------------------- portable vector extensions --
constexpr int kWidth = 4;
typedef float F4 __attribute__((vector_size(16)));
typedef int32_t I4 __attribute__((vector_size(16)));
struct Vec { F4 v; };
using Mask = I4;  // all-ones lanes are true

inline Mask first_lanes(int n) { return I4{0, 1, 2, 3} < I4{n, n, n, n}; }
inline Vec load(const float* p) { Vec a; std::memcpy(&a.v, p, sizeof a.v); return a; }
inline Vec load(const float* p, int n) {
  Vec a{F4{0, 0, 0, 0}};
  std::memcpy(&a.v, p, sizeof(float) * n);
  return a;
}
inline void store(float* p, Vec a) { std::memcpy(p, &a.v, sizeof a.v); }
inline void store(float* p, Vec a, int n) { std::memcpy(p, &a.v, sizeof(float) * n); }
inline void stream(float* p, Vec a) { store(p, a); }
inline void stream_fence() {}
inline Vec splat(float x) { return {F4{x, x, x, x}}; }
inline Vec operator+(Vec a, Vec b) { return {a.v + b.v}; }
inline Vec operator-(Vec a, Vec b) { return {a.v - b.v}; }
inline Vec operator*(Vec a, Vec b) { return {a.v * b.v}; }
inline Vec fma(Vec a, Vec b, Vec c) { return {a.v * b.v + c.v}; }
inline Vec reciprocal(Vec a) { return {F4{1, 1, 1, 1} / a.v}; }
inline Vec operator/(Vec a, Vec b) { return {a.v / b.v}; }
inline Vec sqrt(Vec a) {
  for (int i = 0; i < 4; ++i) a.v[i] = __builtin_sqrtf(a.v[i]);
  return a;
}
inline Vec abs(Vec a) {
  I4 bits;
  std::memcpy(&bits, &a.v, sizeof bits);
  bits &= I4{0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff};
  std::memcpy(&a.v, &bits, sizeof bits);
  return a;
}
inline float reduce_add(Vec a) { return (a.v[0] + a.v[2]) + (a.v[1] + a.v[3]); }
inline Mask less(Vec a, Vec b) { return a.v < b.v; }
inline Mask greater(Vec a, Vec b) { return a.v > b.v; }
inline Mask not_less(Vec a, Vec b) { return ~(a.v < b.v); }
inline Vec select(Mask m, Vec a, Vec b);
inline Vec min(Vec a, Vec b) { return select(less(b, a), b, a); }  // a when NaN
inline Vec max(Vec a, Vec b) { return select(greater(b, a), b, a); }
inline Vec select(Mask m, Vec a, Vec b) {
  I4 ia, ib;
  std::memcpy(&ia, &a.v, sizeof ia);
  std::memcpy(&ib, &b.v, sizeof ib);
  I4 r = (ia & m) | (ib & ~m);
  Vec out;
  std::memcpy(&out.v, &r, sizeof r);
  return out;
}
inline Vec ldexp(Vec a, Vec n) {
  Vec r;
  for (int i = 0; i < 4; ++i) r.v[i] = __builtin_ldexpf(a.v[i], static_cast<int>(n.v[i]));
  return r;
}
inline Vec load_bf16(const uint16_t* p, int n) {
  I4 bits = {0, 0, 0, 0};
  for (int i = 0; i < n; ++i) bits[i] = static_cast<int32_t>(static_cast<uint32_t>(p[i]) << 16);
  Vec a;
  std::memcpy(&a.v, &bits, sizeof bits);
  return a;
}
inline Vec load_bf16(const uint16_t* p) { return load_bf16(p, 4); }
#endif

// ------------------------------------------------ shared by all three sets --

// Writes out[0, n) as value(j, lanes) for consecutive vectors, where `lanes`
// < kWidth only at the ends. With `streaming`, the aligned middle part uses
// non-temporal stores: for outputs far larger than the caches this saves
// the read-for-ownership of each line, a third of a copy's traffic.
template <class F>
inline void write_vectors(float* out, int64_t n, bool streaming, F value) {
  int64_t j = 0;
  if (streaming) {
    const auto misalignment = reinterpret_cast<uintptr_t>(out) % (kWidth * sizeof(float));
    if (misalignment % sizeof(float) == 0) {
      int64_t head = misalignment ? kWidth - static_cast<int64_t>(misalignment / sizeof(float)) : 0;
      if (head > n) head = n;
      if (head) store(out, value(0, static_cast<int>(head)), static_cast<int>(head));
      for (j = head; j + kWidth <= n; j += kWidth) stream(out + j, value(j, kWidth));
    }
  }
  for (; j + kWidth <= n; j += kWidth) store(out + j, value(j, kWidth));
  if (j < n) store(out + j, value(j, static_cast<int>(n - j)), static_cast<int>(n - j));
}
inline Vec& operator+=(Vec& a, Vec b) { return a = a + b; }

}  // namespace ssl_core::cpu::SSL_CORE_ISA

#include <cstdlib>
#include <new>

namespace ssl_core::cpu::SSL_CORE_ISA {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Scratch memory for a kernel, cache-line aligned and freed on scope exit.
// (Not std::vector: a std template instantiated here with AVX-512 flags could
// be shared by the linker with the portable build.)
template <class T>
class ScratchBuffer {
 public:
  explicit ScratchBuffer(int64_t count) {
    size_t bytes = (static_cast<size_t>(count > 0 ? count : 1) * sizeof(T) + 63) / 64 * 64;
    data_ = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (!data_) throw std::bad_alloc();
  }
  ~ScratchBuffer() { std::free(data_); }
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  T* get() const { return data_; }

 private:
  T* data_;
};

// Hands out 64-byte aligned float arrays from one block (a ScratchBuffer). A
// scratch layout is written once, as a constructor taking a Carver; run on a
// null base it only counts, which sizes the block.
class Carver {
 public:
  explicit Carver(float* base) : base_(base) {}
  float* take(int64_t count) {
    float* p = base_ ? base_ + used_ : nullptr;
    used_ += round_up(count, 16);  // 64-byte steps
    return p;
  }
  int64_t used() const { return used_; }

 private:
  float* base_;
  int64_t used_ = 0;
};

// Floats a scratch layout S, constructed from (Carver&, args...), takes.
template <class S, class... Args>
int64_t scratch_floats(const Args&... args) {
  Carver counter(nullptr);
  S(counter, args...);
  return counter.used();
}

}  // namespace ssl_core::cpu::SSL_CORE_ISA
