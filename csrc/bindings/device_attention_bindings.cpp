// Python entry points of the CUDA attention kernels (attention_forward.cu,
// attention_forward_16bit.cu, attention_backward.cu): outputs first, then
// inputs, then scalars, then the stream. Every argument is checked here, before any kernel runs (shapes with
// the expected shape in the message); the kernels see only views and
// AttentionOptions. The same file builds ssl_core._C.cuda and ssl_core._simt.
#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "device_arrays.h"
#include "ssl_core/cuda_kernels.h"

namespace ssl_core::bindings {
namespace {

using Shape = std::vector<int64_t>;

template <class T>
Shape shape_of(const HeadsViewT<T>& v) {
  return {v.batch, v.seq, v.heads, v.dim};
}

// A float32 (B, T, H, D) array of exactly `expected` shape.
HeadsView heads_like(py::handle obj, const char* name, const Shape& expected, const char* what, bool writable) {
  const HeadsView v = device_heads(obj, name, writable);
  if (shape_of(v) != expected)
    throw py::value_error(std::string(name) + " must have shape " + what + " = " + shape_string(expected) +
                          ", got " + shape_string(shape_of(v)));
  return v;
}

// q (B, Tq, H, D); k and v (B, Tk, H, D) with the same B, H, D.
template <class T>
void require_matching(const HeadsViewT<T>& q, const HeadsViewT<T>& k, const HeadsViewT<T>& v) {
  if (shape_of(k) != shape_of(v))
    throw py::value_error("k and v must have the same shape (batch, keys, heads, head_dim), got k " +
                          shape_string(shape_of(k)) + " and v " + shape_string(shape_of(v)));
  if (q.batch != k.batch || q.heads != k.heads || q.dim != k.dim)
    throw py::value_error("q " + shape_string(shape_of(q)) + " and k " + shape_string(shape_of(k)) +
                          " must agree in batch, heads and head_dim (axes 0, 2 and 3)");
  if (q.dim < 1) throw py::value_error("head_dim must be at least 1, got q of shape " + shape_string(shape_of(q)));
  if (q.dim > 128)
    throw py::value_error("the CUDA attention kernels support head_dim up to 128, got q of shape " +
                          shape_string(shape_of(q)));
}

// lse: float32 (B, H, Tq), C-contiguous.
template <class T>
float* lse_arg(py::handle obj, const HeadsViewT<T>& q, bool writable) {
  const Shape expected = {q.batch, q.heads, q.seq};
  const DeviceArray a = device_array(obj, "lse");
  if (a.typestr != "<f4") throw py::type_error("lse must have dtype float32, got typestr '" + a.typestr + "'");
  if (writable && a.readonly)
    throw py::value_error("lse is an output and must be writable, got a read-only array");
  if (a.shape != expected)
    throw py::value_error("lse must have shape (B, H, Tq) = " + shape_string(expected) + ", got " +
                          shape_string(a.shape));
  // C-contiguous (axes of length 1 may have any stride).
  int64_t stride = 1;
  for (int d = 2; d >= 0; --d) {
    if (a.shape[d] != 1 && a.strides[d] != stride)
      throw py::value_error("lse must be C-contiguous, got element strides " + shape_string(a.strides));
    stride *= a.shape[d];
  }
  return static_cast<float*>(a.data);
}

// The memory of a view, in bytes: rows of row_bytes starting at base + the
// sum of c[a] * stride[a] over 0 <= c[a] < size[a] (axes of size 1 dropped).
struct Footprint {
  uintptr_t base = 0;
  int64_t row_bytes = 0;
  std::vector<std::pair<int64_t, int64_t>> axes;  // (stride, size), size > 1
  bool empty = true;
};

template <class T>
Footprint footprint(const HeadsViewT<T>& x) {
  Footprint f;
  if (x.batch == 0 || x.seq == 0 || x.heads == 0 || x.dim == 0) return f;
  f.base = reinterpret_cast<uintptr_t>(x.data);
  f.row_bytes = x.dim * static_cast<int64_t>(sizeof(T));
  const int64_t sizes[3] = {x.batch, x.seq, x.heads}, strides[3] = {x.batch_stride, x.seq_stride, x.head_stride};
  for (int a = 0; a < 3; ++a)
    if (sizes[a] > 1) f.axes.push_back({strides[a] * static_cast<int64_t>(sizeof(T)), sizes[a]});
  std::sort(f.axes.begin(), f.axes.end());
  f.empty = false;
  return f;
}

Footprint footprint(const float* data, int64_t n) {
  Footprint f;
  f.base = reinterpret_cast<uintptr_t>(data);
  f.row_bytes = n * static_cast<int64_t>(sizeof(float));
  f.empty = n == 0;
  return f;
}

// [lowest, highest) byte of a footprint, whatever the stride signs.
std::pair<int64_t, int64_t> span(const Footprint& f) {
  int64_t low = 0, high = f.row_bytes;
  for (const auto& [stride, size] : f.axes) (stride < 0 ? low : high) += (size - 1) * stride;
  return {static_cast<int64_t>(f.base) + low, static_cast<int64_t>(f.base) + high};
}

// Rows of the same layout `f` shifted by delta bytes: does some row of the
// shifted copy meet some row of f? Exact for nested layouts (each stride at
// least the extent of the axes below it, rows included), where an axis
// leaves at most two candidate index differences.
bool shifted_rows_meet(const Footprint& f, int64_t delta, int level) {
  if (level < 0) return -f.row_bytes < delta && delta < f.row_bytes;
  const auto [stride, size] = f.axes[level];
  const int64_t first = -delta >= 0 ? -delta / stride : -((delta + stride - 1) / stride);  // floor(-delta / stride)
  for (int64_t d = first; d <= first + 1; ++d)
    if (d > -size && d < size && shifted_rows_meet(f, delta + d * stride, level - 1)) return true;
  return false;
}

bool nested(const Footprint& f) {
  int64_t extent = f.row_bytes;
  for (const auto& [stride, size] : f.axes) {
    if (stride < extent) return false;
    extent = stride * size;
  }
  return true;
}

bool overlap(const Footprint& a, const Footprint& b) {
  if (a.empty || b.empty) return false;
  const auto [a0, a1] = span(a);
  const auto [b0, b1] = span(b);
  if (!(a0 < b1 && b0 < a1)) return false;
  // Interleaved views of one array (q, k and v of a fused QKV projection):
  // same layout at different offsets.
  if (a.row_bytes == b.row_bytes && a.axes == b.axes && nested(a))
    return shifted_rows_meet(a, static_cast<int64_t>(b.base) - static_cast<int64_t>(a.base),
                             static_cast<int>(a.axes.size()) - 1);
  return true;  // otherwise the spans decide (conservatively)
}

// Outputs are written while other blocks still read the inputs (and other
// rows of the outputs), so no output may share memory with an input or with
// another output; the CPU op rejects the same.
void require_disjoint(const std::vector<std::pair<const char*, Footprint>>& outputs,
                      const std::vector<std::pair<const char*, Footprint>>& inputs) {
  for (size_t i = 0; i < outputs.size(); ++i) {
    for (size_t j = i + 1; j < outputs.size(); ++j)
      if (overlap(outputs[i].second, outputs[j].second))
        throw py::value_error(std::string("outputs ") + outputs[i].first + " and " + outputs[j].first +
                              " share memory");
    for (const auto& [name, input] : inputs)
      if (overlap(outputs[i].second, input))
        throw py::value_error(std::string(outputs[i].first) + " shares memory with input " + name +
                              "; this op cannot work in place");
  }
}

// Dropout counts batch, heads and positions in 32-bit Philox counter words.
template <class T>
void require_dropout_range(const HeadsViewT<T>& q, const HeadsViewT<T>& k, double dropout_p) {
  if (dropout_p > 0 && (q.batch > UINT32_MAX || q.heads > UINT32_MAX || q.seq > UINT32_MAX || k.seq > UINT32_MAX))
    throw py::value_error("dropout counts batch, heads and positions in 32 bits; a dimension exceeds 2^32");
}

// out (B, Tq, H, D) and lse (B, H, Tq) <- q (B, Tq, H, D), k, v (B, Tk, H, D).
void attention_forward(py::handle out_obj, py::handle lse_obj, py::handle q_obj, py::handle k_obj,
                       py::handle v_obj, double scale, bool causal, py::handle key_lengths,
                       py::handle prefix_lengths, py::handle mask, double dropout_p, uint64_t seed,
                       uintptr_t stream) {
  const HeadsView q = device_heads(q_obj, "q"), k = device_heads(k_obj, "k"), v = device_heads(v_obj, "v");
  require_matching(q, k, v);
  const HeadsView out = heads_like(out_obj, "out", shape_of(q), "(B, Tq, H, D), like q", true);
  float* lse = lse_arg(lse_obj, q, true);
  const AttentionOptions options = device_attention_options(q.batch, q.heads, q.seq, k.seq, scale, causal,
                                                            key_lengths, prefix_lengths, mask, dropout_p, seed);
  require_dropout_range(q, k, dropout_p);
  require_disjoint({{"out", footprint(out)}, {"lse", footprint(lse, q.batch * q.heads * q.seq)}},
                   {{"q", footprint(q)}, {"k", footprint(k)}, {"v", footprint(v)}});
  py::gil_scoped_release release;
  cuda::attention_forward(out, lse, as_const(q), as_const(k), as_const(v), options, stream_handle(stream));
}

template <class T>
HeadsViewT<const T> as_const(const HeadsViewT<T>& x) {
  return {x.data, x.batch, x.seq, x.heads, x.dim, x.batch_stride, x.seq_stride, x.head_stride};
}

// (typestr, kernel type) of the 16-bit kernel's dtype argument.
std::pair<const char*, cuda::HalfType> half_type(const std::string& dtype) {
  if (dtype == "float16") return {"<f2", cuda::HalfType::float16};
  if (dtype == "bfloat16") return {"<u2", cuda::HalfType::bfloat16};
  throw py::value_error("dtype must be 'float16' or 'bfloat16', got '" + dtype + "'");
}

// The same on tensor cores for 16-bit q, k, v and out (dtype "float16": float16
// arrays; "bfloat16": uint16 arrays of bfloat16 bits, which NumPy and the
// array interface have no type for); lse float32.
void attention_forward_16bit(py::handle out_obj, py::handle lse_obj, py::handle q_obj, py::handle k_obj,
                             py::handle v_obj, const std::string& dtype, double scale, bool causal,
                             py::handle key_lengths, py::handle prefix_lengths, py::handle mask, double dropout_p,
                             uint64_t seed, uintptr_t stream) {
  using Heads16 = HeadsViewT<uint16_t>;
  const auto [typestr, type] = half_type(dtype);
  const Heads16 q = device_heads16(q_obj, "q", typestr), k = device_heads16(k_obj, "k", typestr),
                v = device_heads16(v_obj, "v", typestr);
  require_matching(q, k, v);
  if (q.dim % 16 != 0)
    throw py::value_error("the 16-bit attention kernel needs head_dim a multiple of 16 in [16, 128] (tensor-core "
                          "tiles), got q of shape " + shape_string(shape_of(q)));
  const Heads16 out = device_heads16(out_obj, "out", typestr, true);
  if (shape_of(out) != shape_of(q))
    throw py::value_error("out must have shape (B, Tq, H, D) = " + shape_string(shape_of(q)) + ", like q, got " +
                          shape_string(shape_of(out)));
  float* lse = lse_arg(lse_obj, q, true);
  const AttentionOptions options = device_attention_options(q.batch, q.heads, q.seq, k.seq, scale, causal,
                                                            key_lengths, prefix_lengths, mask, dropout_p, seed);
  require_dropout_range(q, k, dropout_p);
  require_disjoint({{"out", footprint(out)}, {"lse", footprint(lse, q.batch * q.heads * q.seq)}},
                   {{"q", footprint(q)}, {"k", footprint(k)}, {"v", footprint(v)}});
  py::gil_scoped_release release;
  cuda::attention_forward_16bit(out, lse, as_const(q), as_const(k), as_const(v), type, options,
                                stream_handle(stream));
}

// dq (B, Tq, H, D), dk, dv (B, Tk, H, D) <- dout, q, k, v, out, lse of the forward.
void attention_backward(py::handle dq_obj, py::handle dk_obj, py::handle dv_obj, py::handle dout_obj,
                        py::handle q_obj, py::handle k_obj, py::handle v_obj, py::handle out_obj,
                        py::handle lse_obj, double scale, bool causal, py::handle key_lengths,
                        py::handle prefix_lengths, py::handle mask, double dropout_p, uint64_t seed,
                        bool deterministic, uintptr_t stream) {
  const HeadsView q = device_heads(q_obj, "q"), k = device_heads(k_obj, "k"), v = device_heads(v_obj, "v");
  require_matching(q, k, v);
  const HeadsView dout = heads_like(dout_obj, "dout", shape_of(q), "(B, Tq, H, D), like q", false);
  const HeadsView out = heads_like(out_obj, "out", shape_of(q), "(B, Tq, H, D), like q", false);
  const float* lse = lse_arg(lse_obj, q, false);
  const HeadsView dq = heads_like(dq_obj, "dq", shape_of(q), "(B, Tq, H, D), like q", true);
  const HeadsView dk = heads_like(dk_obj, "dk", shape_of(k), "(B, Tk, H, D), like k", true);
  const HeadsView dv = heads_like(dv_obj, "dv", shape_of(v), "(B, Tk, H, D), like v", true);
  const AttentionOptions options = device_attention_options(q.batch, q.heads, q.seq, k.seq, scale, causal,
                                                            key_lengths, prefix_lengths, mask, dropout_p, seed);
  require_dropout_range(q, k, dropout_p);
  require_disjoint({{"dq", footprint(dq)}, {"dk", footprint(dk)}, {"dv", footprint(dv)}},
                   {{"dout", footprint(dout)}, {"q", footprint(q)}, {"k", footprint(k)}, {"v", footprint(v)},
                    {"out", footprint(out)}, {"lse", footprint(lse, q.batch * q.heads * q.seq)}});
  py::gil_scoped_release release;
  cuda::attention_backward(dq, dk, dv, as_const(dout), as_const(q), as_const(k), as_const(v), as_const(out), lse,
                           options, deterministic, stream_handle(stream));
}

}  // namespace

void bind_device_attention(py::module_& m) {
  m.def("attention_forward", &attention_forward, py::arg("out"), py::arg("lse"), py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("scale"), py::arg("causal") = false, py::arg("key_lengths") = py::none(),
        py::arg("prefix_lengths") = py::none(), py::arg("mask") = py::none(), py::arg("dropout_p") = 0.0,
        py::arg("seed") = 0, py::arg("stream") = 0,
        "out (B, Tq, H, D) = softmax(q k^T scale + mask) v and lse (B, H, Tq), the natural log-sum-exp of each "
        "query's scores (+inf where no key is visible). Asynchronous on `stream`.");
  m.def("attention_forward_16bit", &attention_forward_16bit, py::arg("out"), py::arg("lse"), py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("dtype"), py::arg("scale"), py::arg("causal") = false,
        py::arg("key_lengths") = py::none(), py::arg("prefix_lengths") = py::none(), py::arg("mask") = py::none(),
        py::arg("dropout_p") = 0.0, py::arg("seed") = 0, py::arg("stream") = 0,
        "attention_forward on tensor cores for 16-bit data: out (B, Tq, H, D) = softmax(q k^T scale + mask) v "
        "and lse (B, H, Tq) float32. dtype 'float16' (q, k, v, out float16) or 'bfloat16' (uint16 arrays of "
        "bfloat16 bits); head_dim a multiple of 16 up to 128. Softmax and accumulation in float32. "
        "Asynchronous on `stream`.");
  m.def("attention_backward", &attention_backward, py::arg("dq"), py::arg("dk"), py::arg("dv"), py::arg("dout"),
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"), py::arg("scale"),
        py::arg("causal") = false, py::arg("key_lengths") = py::none(), py::arg("prefix_lengths") = py::none(),
        py::arg("mask") = py::none(), py::arg("dropout_p") = 0.0, py::arg("seed") = 0,
        py::arg("deterministic") = false, py::arg("stream") = 0,
        "dq, dk, dv of attention given dout and the forward's out and lse (same masks, scale and dropout). "
        "deterministic: accumulate dq in a fixed order instead of with atomics. Asynchronous on `stream`.");
}

}  // namespace ssl_core::bindings
