// Device arguments of the CUDA kernels, taken without copies from any array
// that exposes __cuda_array_interface__ (CuPy, PyTorch, Numba, JAX's buffers).
//
// The same binding code builds ssl_core._C.cuda (real GPU memory) and
// ssl_core._simt (the kernels on the CPU emulator). In the emulator build,
// host memory stands in for device memory, so NumPy arrays (the
// __array_interface__, same format) are accepted too.
//
// Every check raises a Python exception naming the argument and what was
// expected: TypeError for a wrong kind of object or dtype, ValueError for a
// wrong shape, layout or value.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "ssl_core/attention.h"
#include "ssl_core/views.h"

namespace ssl_core::bindings {

namespace py = pybind11;

struct DeviceArray {
  void* data = nullptr;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in elements (C-contiguous when the interface gives none)
  std::string typestr;           // e.g. "<f4", "<i8", "|b1"
  bool readonly = false;
  int64_t size() const;
};

// The array interface of `obj`; TypeError naming `name` if it has none.
DeviceArray device_array(py::handle obj, const char* name);

// A float32 rows view (kernels.h): at least 1-D, last axis contiguous, the
// leading axes collapsing into one row stride. `cols` >= 0 requires that many
// columns; `writable` requires a writable array.
RowsView device_rows(py::handle obj, const char* name, int64_t cols = -1, bool writable = false);
// A float32 (B, T, H, D) view with a contiguous last axis (attention.h).
HeadsView device_heads(py::handle obj, const char* name, bool writable = false);
// A 16-bit (B, T, H, D) view with a contiguous last axis, the elements as
// their bits: dtype float16 (typestr "<f2") or, as NumPy has no bfloat16,
// uint16 bits of bfloat16 ("<u2"); `typestr` says which is required.
HeadsViewT<uint16_t> device_heads16(py::handle obj, const char* name, const char* typestr, bool writable = false);
// A contiguous float32 vector of n elements; nullptr for None when `optional`.
float* device_floats(py::handle obj, const char* name, int64_t n, bool optional = false, bool writable = false);
// A contiguous int64 vector of n elements; nullptr for None when `optional`.
int64_t* device_int64s(py::handle obj, const char* name, int64_t n, bool optional = false);

// A C-contiguous float32 array of exactly `shape` (mean, rstd, lse).
float* device_contiguous(py::handle obj, const char* name, const std::vector<int64_t>& shape, bool writable = false);

// The memory an array argument covers: rows of row_bytes at base plus every
// combination of (stride, size) steps, in bytes. Kernels write their outputs
// while other blocks still read the inputs, so the bindings refuse outputs
// that share memory with an input or with each other.
struct Footprint {
  uintptr_t base = 0;
  int64_t row_bytes = 0;
  std::vector<std::pair<int64_t, int64_t>> axes;  // (stride, size) with size > 1, sorted
  bool empty = true;
};

// axes: (stride in bytes, size); null data or a zero size is empty.
Footprint footprint(const void* data, int64_t row_bytes, std::vector<std::pair<int64_t, int64_t>> axes);

template <class T>
Footprint footprint(const HeadsViewT<T>& x) {
  constexpr int64_t item = sizeof(T);
  return footprint(x.data, x.dim * item,
                   {{x.batch_stride * item, x.batch}, {x.seq_stride * item, x.seq}, {x.head_stride * item, x.heads}});
}

template <class T>
Footprint footprint(const RowsViewT<T>& x) {
  return footprint(x.data, x.cols * int64_t{sizeof(T)}, {{x.row_stride * int64_t{sizeof(T)}, x.rows}});
}

inline Footprint footprint(const float* data, int64_t n) { return footprint(data, n * int64_t{sizeof(float)}, {}); }

using NamedFootprints = std::vector<std::pair<const char*, Footprint>>;

// ValueError naming the pair when two outputs, or an output and an input,
// share memory. allow_in_place: an output may be exactly the same view as an
// input (elementwise kernels, which read each element before writing it).
// Exact for interleaved views of one array (q, k, v slices of a fused QKV
// array); other overlapping spans are refused conservatively.
void require_disjoint(const NamedFootprints& outputs, const NamedFootprints& inputs, bool allow_in_place = false);

// The options of the attention kernels: key_lengths / prefix_lengths int64
// (B,) or None; mask a bool or uint8 array (B, H, Tq, Tk), any axis of
// length 1 broadcasting, or None; dropout_p in [0, 1).
AttentionOptions device_attention_options(int64_t B, int64_t H, int64_t Tq, int64_t Tk, double scale, bool causal,
                                          py::handle key_lengths, py::handle prefix_lengths, py::handle mask,
                                          double dropout_p, uint64_t seed);

// A shape for messages: "(4, 768)" (arrays.cpp).
std::string shape_string(const std::vector<int64_t>& shape);

// The stream argument of a binding: an integer handle (cudaStream_t), 0 for
// the legacy default stream.
inline void* stream_handle(uintptr_t stream) { return reinterpret_cast<void*>(stream); }

// Registers the device kernels on `m`; defined in device_*_bindings.cpp.
void bind_device_norm(py::module_& m);        // layer_norm_forward/backward, gelu_forward/backward, adamw_update
void bind_device_attention(py::module_& m);   // attention_forward(_16bit)/backward
void bind_device_loss(py::module_& m);        // linear_cross_entropy

}  // namespace ssl_core::bindings
