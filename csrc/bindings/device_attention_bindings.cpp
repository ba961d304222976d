// Python entry points of the CUDA attention kernels (attention_forward.cu,
// attention_forward_16bit.cu, attention_backward.cu): outputs first, then
// inputs, then scalars, then the stream. Every argument is checked here, before any kernel runs (shapes with
// the expected shape in the message); the kernels see only views and
// AttentionOptions. The same file builds ssl_core._C.cuda and ssl_core._simt.
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
  return device_contiguous(obj, "lse", {q.batch, q.heads, q.seq}, writable);
}

// Dropout counts batch, heads and positions in 32-bit Philox counter words.
template <class T>
void require_dropout_range(const HeadsViewT<T>& q, const HeadsViewT<T>& k, double dropout_p) {
  if (dropout_p > 0 && (q.batch > UINT32_MAX || q.heads > UINT32_MAX || q.seq > UINT32_MAX || k.seq > UINT32_MAX))
    throw py::value_error("dropout counts batch, heads and positions in 32 bits; a dimension exceeds 2^32");
}

// The options of a forward, after the checks that need them: dropout's
// range, and no output sharing memory with an input or the other output.
template <class T>
AttentionOptions forward_options(const HeadsViewT<T>& out, const float* lse, const HeadsViewT<T>& q,
                                 const HeadsViewT<T>& k, const HeadsViewT<T>& v, double scale, bool causal,
                                 py::handle key_lengths, py::handle prefix_lengths, py::handle mask, double dropout_p,
                                 uint64_t seed) {
  const AttentionOptions options = device_attention_options(q.batch, q.heads, q.seq, k.seq, scale, causal,
                                                            key_lengths, prefix_lengths, mask, dropout_p, seed);
  require_dropout_range(q, k, dropout_p);
  require_disjoint({{"out", footprint(out)}, {"lse", footprint(lse, q.batch * q.heads * q.seq)}},
                   {{"q", footprint(q)}, {"k", footprint(k)}, {"v", footprint(v)}});
  return options;
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
  const AttentionOptions options =
      forward_options(out, lse, q, k, v, scale, causal, key_lengths, prefix_lengths, mask, dropout_p, seed);
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
  const AttentionOptions options =
      forward_options(out, lse, q, k, v, scale, causal, key_lengths, prefix_lengths, mask, dropout_p, seed);
  py::gil_scoped_release release;
  cuda::attention_forward_16bit(out, lse, as_const(q), as_const(k), as_const(v), type, options,
                                stream_handle(stream));
}

// The backward on tensor cores for 16-bit dq, dk, dv, dout, q, k, v and out
// (dtype as attention_forward_16bit), lse float32 from the forward.
void attention_backward_16bit(py::handle dq_obj, py::handle dk_obj, py::handle dv_obj, py::handle dout_obj,
                              py::handle q_obj, py::handle k_obj, py::handle v_obj, py::handle out_obj,
                              py::handle lse_obj, const std::string& dtype, double scale, bool causal,
                              py::handle key_lengths, py::handle prefix_lengths, py::handle mask, double dropout_p,
                              uint64_t seed, bool deterministic, uintptr_t stream) {
  using Heads16 = HeadsViewT<uint16_t>;
  const auto [typestr, type] = half_type(dtype);
  const Heads16 q = device_heads16(q_obj, "q", typestr), k = device_heads16(k_obj, "k", typestr),
                v = device_heads16(v_obj, "v", typestr);
  require_matching(q, k, v);
  if (q.dim % 16 != 0)
    throw py::value_error("the 16-bit attention kernel needs head_dim a multiple of 16 in [16, 128] (tensor-core "
                          "tiles), got q of shape " + shape_string(shape_of(q)));
  const auto like = [&](py::handle obj, const char* name, const Heads16& model, const char* what, bool writable) {
    const Heads16 x = device_heads16(obj, name, typestr, writable);
    if (shape_of(x) != shape_of(model))
      throw py::value_error(std::string(name) + " must have shape " + what + " = " + shape_string(shape_of(model)) +
                            ", got " + shape_string(shape_of(x)));
    return x;
  };
  const Heads16 dout = like(dout_obj, "dout", q, "(B, Tq, H, D), like q", false);
  const Heads16 out = like(out_obj, "out", q, "(B, Tq, H, D), like q", false);
  const float* lse = lse_arg(lse_obj, q, false);
  const Heads16 dq = like(dq_obj, "dq", q, "(B, Tq, H, D), like q", true);
  const Heads16 dk = like(dk_obj, "dk", k, "(B, Tk, H, D), like k", true);
  const Heads16 dv = like(dv_obj, "dv", v, "(B, Tk, H, D), like v", true);
  const AttentionOptions options = device_attention_options(q.batch, q.heads, q.seq, k.seq, scale, causal,
                                                            key_lengths, prefix_lengths, mask, dropout_p, seed);
  require_dropout_range(q, k, dropout_p);
  require_disjoint({{"dq", footprint(dq)}, {"dk", footprint(dk)}, {"dv", footprint(dv)}},
                   {{"dout", footprint(dout)}, {"q", footprint(q)}, {"k", footprint(k)}, {"v", footprint(v)},
                    {"out", footprint(out)}, {"lse", footprint(lse, q.batch * q.heads * q.seq)}});
  py::gil_scoped_release release;
  cuda::attention_backward_16bit(dq, dk, dv, as_const(dout), as_const(q), as_const(k), as_const(v), as_const(out),
                                 lse, type, options, deterministic, stream_handle(stream));
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
  m.def("attention_backward_16bit", &attention_backward_16bit, py::arg("dq"), py::arg("dk"), py::arg("dv"),
        py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"), py::arg("dtype"),
        py::arg("scale"), py::arg("causal") = false, py::arg("key_lengths") = py::none(),
        py::arg("prefix_lengths") = py::none(), py::arg("mask") = py::none(), py::arg("dropout_p") = 0.0,
        py::arg("seed") = 0, py::arg("deterministic") = false, py::arg("stream") = 0,
        "attention_backward on tensor cores for 16-bit data: dq, dk, dv (16-bit, like q, k, v) given dout, out "
        "(16-bit) and the forward's lse (float32). dtype 'float16' or 'bfloat16' (uint16 arrays of bfloat16 "
        "bits); head_dim a multiple of 16 up to 128; accumulation in float32. deterministic: dq in a fixed "
        "order instead of with atomics. Asynchronous on `stream`.");
}

}  // namespace ssl_core::bindings
