// nvcuda::wmma for the emulator: the warp-wide matrix operations that use
// tensor cores on a GPU, for the m16n16k16 shape with __half or
// __nv_bfloat16 inputs and float accumulators.
//
// Each lane's fragment holds 8 of the tile's 256 elements, in a deliberately
// scrambled order (tile_index): the hardware's order is unspecified, so a
// kernel that assumes one (reading fragment.x[i] as a given row and column)
// gets wrong results here instead of working by luck on one GPU. Elementwise
// use of x[] (scaling, conversion) is legal and works. Loads, stores and
// mma_sync are warp collectives that need all 32 lanes; pointers must be
// 256-bit aligned and ldm a multiple of 16 bytes, as on a GPU.
#pragma once

#include <string>
#include <type_traits>

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulator supports the m16n16k16 shape only");
  static constexpr int num_elements = 8;
  T x[num_elements];
};

namespace detail {

// Element e of a lane's fragment is element tile_index(lane, e) of the 16x16
// tile in row-major order: a fixed permutation of 0..255.
inline int tile_index(int lane, int element) { return ((lane * 8 + element) * 37 + 11) & 255; }

inline int lane() {
  const int linear = static_cast<int>(threadIdx.x + threadIdx.y * blockDim.x +
                                      threadIdx.z * blockDim.x * blockDim.y);
  return linear % 32;
}

inline float to_float(float v) { return v; }
inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T>
void check_pointer(const T* pointer, unsigned ldm, const char* what, const char* file, int line) {
  if (reinterpret_cast<uintptr_t>(pointer) % 32 != 0)
    simt::kernel_fault(std::string(what) + " at " + file + ":" + std::to_string(line) +
                       ": the pointer is not 256-bit aligned");
  if (ldm * sizeof(T) % 16 != 0)
    simt::kernel_fault(std::string(what) + " at " + file + ":" + std::to_string(line) + ": ldm " +
                       std::to_string(ldm) + " is not a multiple of 16 bytes");
}

inline void no_op(void* const*) {}

// One warp-wide step that only needs the whole warp to be there.
inline void whole_warp(const char* file, int line) { simt::warp_matrix_op(nullptr, &no_op, file, line); }

template <class Frag>
void load(Frag& f, const void* base, unsigned ldm, bool row_major) {
  using T = std::remove_reference_t<decltype(f.x[0])>;
  const T* p = static_cast<const T*>(base);
  const int lane_index = lane();
  for (int e = 0; e < Frag::num_elements; ++e) {
    const int index = tile_index(lane_index, e), r = index / 16, c = index % 16;
    f.x[e] = row_major ? p[r * ldm + c] : p[c * ldm + r];
  }
}

template <class A, class B, class C, class D>
struct MmaOperands {
  D* d;
  const A* a;
  const B* b;
  const C* c;
};

template <class A, class B, class C, class D>
void mma_complete(void* const* payloads) {
  float a[256], b[256], c[256];
  for (int lane = 0; lane < 32; ++lane) {
    const auto* op = static_cast<const MmaOperands<A, B, C, D>*>(payloads[lane]);
    for (int e = 0; e < 8; ++e) {
      const int index = tile_index(lane, e);
      a[index] = to_float(op->a->x[e]);
      b[index] = to_float(op->b->x[e]);
      c[index] = to_float(op->c->x[e]);
    }
  }
  float d[256];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float sum = c[i * 16 + j];
      for (int k = 0; k < 16; ++k) sum += a[i * 16 + k] * b[k * 16 + j];
      d[i * 16 + j] = sum;
    }
  for (int lane = 0; lane < 32; ++lane) {
    auto* op = static_cast<const MmaOperands<A, B, C, D>*>(payloads[lane]);
    for (int e = 0; e < 8; ++e) op->d->x[e] = d[tile_index(lane, e)];
  }
}

}  // namespace detail

template <class Use, class T, class Layout>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, T value) {
  for (T& x : f.x) x = value;
}

// matrix_a (16 x 16, rows x k) and matrix_b (16 x 16, k x columns).
template <class Use, class T, class Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* pointer, unsigned ldm,
                      const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  static_assert(std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>,
                "matrix_a and matrix_b fragments name their layout");
  detail::check_pointer(pointer, ldm, "load_matrix_sync", file, line);
  detail::whole_warp(file, line);
  detail::load(f, pointer, ldm, std::is_same_v<Layout, row_major>);
}

template <class T>
void load_matrix_sync(fragment<accumulator, 16, 16, 16, T>& f, const T* pointer, unsigned ldm, layout_t layout,
                      const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  detail::check_pointer(pointer, ldm, "load_matrix_sync", file, line);
  detail::whole_warp(file, line);
  detail::load(f, pointer, ldm, layout == mem_row_major);
}

template <class T>
void store_matrix_sync(T* pointer, const fragment<accumulator, 16, 16, 16, T>& f, unsigned ldm, layout_t layout,
                       const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  detail::check_pointer(pointer, ldm, "store_matrix_sync", file, line);
  detail::whole_warp(file, line);
  const int lane = detail::lane();
  for (int e = 0; e < 8; ++e) {
    const int index = detail::tile_index(lane, e), r = index / 16, c = index % 16;
    (layout == mem_row_major ? pointer[r * ldm + c] : pointer[c * ldm + r]) = f.x[e];
  }
}

// d = a b + c, in float32; d may be c.
template <class TA, class LA, class TB, class LB, class TC>
void mma_sync(fragment<accumulator, 16, 16, 16, TC>& d, const fragment<matrix_a, 16, 16, 16, TA, LA>& a,
              const fragment<matrix_b, 16, 16, 16, TB, LB>& b, const fragment<accumulator, 16, 16, 16, TC>& c,
              const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using A = fragment<matrix_a, 16, 16, 16, TA, LA>;
  using B = fragment<matrix_b, 16, 16, 16, TB, LB>;
  using C = fragment<accumulator, 16, 16, 16, TC>;
  detail::MmaOperands<A, B, C, C> operands{&d, &a, &b, &c};
  simt::warp_matrix_op(&operands, &detail::mma_complete<A, B, C, C>, file, line);
}

}  // namespace wmma
}  // namespace nvcuda
