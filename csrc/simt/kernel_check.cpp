// Every CUDA kernel on the emulator against the CPU reference, on small
// shapes, as a standalone program: the sanitizer builds (ctest) run it under
// AddressSanitizer + -fsanitize=bounds (reads and writes outside any buffer,
// static shared arrays included) and under ThreadSanitizer (a missing
// __syncthreads or a race between blocks), with the grid in both orders.
//
//   simt_kernel_check [forward|reverse] [missing-barrier|with-barrier|
//                      static-shared-overflow|dynamic-shared-overread]
//
// The other modes run one planted kernel instead, whose bug the sanitizer
// must report (the ctests expect its report): "missing-barrier" (a race for
// ThreadSanitizer), the two out-of-bounds shared memory accesses (bounds
// checks and AddressSanitizer); "with-barrier" is the race-free twin, which
// must pass.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "simt/self_test.h"
#include "simt/simt.h"
#include "ssl_core/cuda_kernels.h"

namespace {

using namespace ssl_core;
namespace ref = ssl_core::cpu::reference;

int g_failures = 0;

std::vector<float> random_floats(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

void expect_close(const char* what, const std::vector<float>& got, const std::vector<float>& want, float tol) {
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double error = std::fabs(double(got[i]) - want[i]) / (1.0 + std::fabs(double(want[i])));
    if (!(error <= worst)) worst = error;  // NaN counts as the worst
  }
  const bool ok = worst <= tol;
  std::printf("%-40s %s (worst relative error %.2e)\n", what, ok ? "ok" : "FAILED", worst);
  g_failures += !ok;
}

RowsView rows(std::vector<float>& v, int64_t n, int64_t c) { return {v.data(), n, c, c}; }
ConstRowsView crows(const std::vector<float>& v, int64_t n, int64_t c) { return {v.data(), n, c, c}; }

void check_layer_norm(std::mt19937& rng) {
  for (int64_t C : {1, 37, 768}) {
    const int64_t N = 5;
    auto x = random_floats(N * C, rng), w = random_floats(C, rng), b = random_floats(C, rng);
    auto dy = random_floats(N * C, rng);
    std::vector<float> y(N * C), mean(N), rstd(N), y_ref(N * C), mean_ref(N), rstd_ref(N);
    cuda::layer_norm_forward(rows(y, N, C), mean.data(), rstd.data(), crows(x, N, C), w.data(), b.data(), 1e-5f,
                             nullptr);
    ref::layer_norm_forward(rows(y_ref, N, C), mean_ref.data(), rstd_ref.data(), crows(x, N, C), w.data(), b.data(),
                            1e-5f);
    expect_close(("layer_norm_forward C=" + std::to_string(C)).c_str(), y, y_ref, 1e-4f);
    std::vector<float> dx(N * C), dw(C), db(C), dx_ref(N * C), dw_ref(C), db_ref(C);
    cuda::layer_norm_backward(rows(dx, N, C), dw.data(), db.data(), crows(dy, N, C), crows(x, N, C), w.data(),
                              mean_ref.data(), rstd_ref.data(), false, nullptr);
    ref::layer_norm_backward(rows(dx_ref, N, C), dw_ref.data(), db_ref.data(), crows(dy, N, C), crows(x, N, C),
                             w.data(), mean_ref.data(), rstd_ref.data(), false);
    expect_close(("layer_norm_backward dx C=" + std::to_string(C)).c_str(), dx, dx_ref, 1e-4f);
    expect_close(("layer_norm_backward dweight C=" + std::to_string(C)).c_str(), dw, dw_ref, 1e-4f);
  }
}

void check_gelu(std::mt19937& rng) {
  for (auto approximate : {cpu::GeluApproximation::none, cpu::GeluApproximation::tanh}) {
    const int64_t N = 3, C = 45;
    auto x = random_floats(N * C, rng, 3.0f), bias = random_floats(C, rng), dy = random_floats(N * C, rng);
    std::vector<float> y(N * C), y_ref(N * C), dx(N * C), dx_ref(N * C);
    cuda::gelu_forward(rows(y, N, C), crows(x, N, C), bias.data(), approximate, nullptr);
    ref::gelu_forward(rows(y_ref, N, C), crows(x, N, C), bias.data(), approximate);
    expect_close("gelu_forward", y, y_ref, 1e-5f);
    cuda::gelu_backward(rows(dx, N, C), crows(dy, N, C), crows(x, N, C), bias.data(), approximate, nullptr);
    ref::gelu_backward(rows(dx_ref, N, C), crows(dy, N, C), crows(x, N, C), bias.data(), approximate);
    expect_close("gelu_backward", dx, dx_ref, 1e-5f);
  }
}

void check_adamw(std::mt19937& rng) {
  const int64_t n = 1001;
  auto p = random_floats(n, rng), g = random_floats(n, rng), m = random_floats(n, rng, 0.1f);
  auto v = random_floats(n, rng, 0.1f);
  for (float& x : v) x = x * x;
  auto p_ref = p, m_ref = m, v_ref = v;
  AdamWOptions options;
  options.weight_decay = 0.01f;
  options.step = 3;
  cuda::adamw_update(p.data(), m.data(), v.data(), g.data(), n, options, nullptr);
  ref::adamw_update(p_ref.data(), m_ref.data(), v_ref.data(), g.data(), n, options);
  expect_close("adamw_update params", p, p_ref, 1e-6f);
}

HeadsView heads(std::vector<float>& v, int64_t B, int64_t T, int64_t H, int64_t D) {
  return {v.data(), B, T, H, D, T * H * D, H * D, D};
}

void check_attention(std::mt19937& rng) {
  const int64_t B = 2, Tq = 13, Tk = 21, H = 2, D = 24;
  const std::vector<int64_t> key_lengths = {21, 9};
  auto q = random_floats(B * Tq * H * D, rng), k = random_floats(B * Tk * H * D, rng);
  auto v = random_floats(B * Tk * H * D, rng), dout = random_floats(B * Tq * H * D, rng);
  for (bool causal : {false, true}) {
    AttentionOptions options;
    options.scale = 1.0f / std::sqrt(float(D));
    options.mask.causal = causal;
    options.mask.key_lengths = key_lengths.data();
    options.dropout_p = causal ? 0.25 : 0.0;
    options.seed = 11;
    std::vector<float> out(q.size()), lse(B * H * Tq), out_ref(q.size()), lse_ref(B * H * Tq);
    cuda::attention_forward(heads(out, B, Tq, H, D), lse.data(), as_const(heads(q, B, Tq, H, D)),
                            as_const(heads(k, B, Tk, H, D)), as_const(heads(v, B, Tk, H, D)), options, nullptr);
    ref::attention_forward(heads(out_ref, B, Tq, H, D), lse_ref.data(), as_const(heads(q, B, Tq, H, D)),
                           as_const(heads(k, B, Tk, H, D)), as_const(heads(v, B, Tk, H, D)), options);
    expect_close(causal ? "attention_forward causal+dropout" : "attention_forward", out, out_ref, 1e-4f);
    std::vector<float> dq(q.size()), dk(k.size()), dv(v.size()), dq_ref(q.size()), dk_ref(k.size()), dv_ref(v.size());
    for (bool deterministic : {false, true}) {
      cuda::attention_backward(heads(dq, B, Tq, H, D), heads(dk, B, Tk, H, D), heads(dv, B, Tk, H, D),
                               as_const(heads(dout, B, Tq, H, D)), as_const(heads(q, B, Tq, H, D)),
                               as_const(heads(k, B, Tk, H, D)), as_const(heads(v, B, Tk, H, D)),
                               as_const(heads(out_ref, B, Tq, H, D)), lse_ref.data(), options, deterministic,
                               nullptr);
      ref::attention_backward(heads(dq_ref, B, Tq, H, D), heads(dk_ref, B, Tk, H, D), heads(dv_ref, B, Tk, H, D),
                              as_const(heads(dout, B, Tq, H, D)), as_const(heads(q, B, Tq, H, D)),
                              as_const(heads(k, B, Tk, H, D)), as_const(heads(v, B, Tk, H, D)),
                              as_const(heads(out_ref, B, Tq, H, D)), lse_ref.data(), options);
      expect_close(deterministic ? "attention_backward dq (deterministic)" : "attention_backward dq", dq, dq_ref,
                   1e-3f);
      expect_close("attention_backward dk", dk, dk_ref, 1e-3f);
      expect_close("attention_backward dv", dv, dv_ref, 1e-3f);
    }
  }
}

// 16-bit inputs against the reference on the same values widened to float32;
// P and out are rounded to 16 bits on the way, hence the tolerance.
void check_attention_16bit(std::mt19937& rng) {
  const int64_t B = 1, Tq = 19, Tk = 70, H = 2, D = 32;
  const std::vector<int64_t> key_lengths = {61};
  for (auto type : {cuda::HalfType::float16, cuda::HalfType::bfloat16}) {
    const bool bf16 = type == cuda::HalfType::bfloat16;
    auto to_bits = [&](const std::vector<float>& x, std::vector<float>& rounded) {
      std::vector<uint16_t> bits(x.size());
      rounded.resize(x.size());
      for (size_t i = 0; i < x.size(); ++i) {
        bits[i] = bf16 ? __float2bfloat16(x[i]).bits : __float2half(x[i]).bits;
        rounded[i] = bf16 ? __bfloat162float(__nv_bfloat16{bits[i]}) : __half2float(__half{bits[i]});
      }
      return bits;
    };
    std::vector<float> q, k, v;
    const auto qb = to_bits(random_floats(B * Tq * H * D, rng), q), kb = to_bits(random_floats(B * Tk * H * D, rng), k),
               vb = to_bits(random_floats(B * Tk * H * D, rng), v);
    AttentionOptions options;
    options.scale = 1.0f / std::sqrt(float(D));
    options.mask.causal = true;
    options.mask.key_lengths = key_lengths.data();
    std::vector<uint16_t> out_bits(q.size());
    std::vector<float> lse(B * H * Tq), out(q.size()), out_ref(q.size()), lse_ref(B * H * Tq);
    auto heads16 = [&](auto* data, int64_t T) {
      return HeadsViewT<std::remove_pointer_t<decltype(data)>>{data, B, T, H, D, T * H * D, H * D, D};
    };
    cuda::attention_forward_16bit(heads16(out_bits.data(), Tq), lse.data(), heads16(qb.data(), Tq),
                                  heads16(kb.data(), Tk), heads16(vb.data(), Tk), type, options, nullptr);
    for (size_t i = 0; i < out.size(); ++i)
      out[i] = bf16 ? __bfloat162float(__nv_bfloat16{out_bits[i]}) : __half2float(__half{out_bits[i]});
    ref::attention_forward(heads(out_ref, B, Tq, H, D), lse_ref.data(), as_const(heads(q, B, Tq, H, D)),
                           as_const(heads(k, B, Tk, H, D)), as_const(heads(v, B, Tk, H, D)), options);
    expect_close(bf16 ? "attention_forward_16bit bfloat16" : "attention_forward_16bit float16", out, out_ref,
                 bf16 ? 1.5e-2f : 2e-3f);  // a few units of 16-bit rounding (2^-8, 2^-11)
    expect_close("attention_forward_16bit lse", lse, lse_ref, 1e-5f);

    // The backward from the reference forward's out (rounded to 16 bits) and lse.
    std::vector<float> dout, out16;
    const auto dout_bits = to_bits(random_floats(q.size(), rng), dout), out_ref_bits = to_bits(out_ref, out16);
    std::vector<uint16_t> dq_bits(q.size()), dk_bits(k.size()), dv_bits(v.size());
    cuda::attention_backward_16bit(heads16(dq_bits.data(), Tq), heads16(dk_bits.data(), Tk),
                                   heads16(dv_bits.data(), Tk), heads16(dout_bits.data(), Tq), heads16(qb.data(), Tq),
                                   heads16(kb.data(), Tk), heads16(vb.data(), Tk), heads16(out_ref_bits.data(), Tq),
                                   lse_ref.data(), type, options, /*deterministic=*/true, nullptr);
    std::vector<float> dq_ref(q.size()), dk_ref(k.size()), dv_ref(v.size());
    ref::attention_backward(heads(dq_ref, B, Tq, H, D), heads(dk_ref, B, Tk, H, D), heads(dv_ref, B, Tk, H, D),
                            as_const(heads(dout, B, Tq, H, D)), as_const(heads(q, B, Tq, H, D)),
                            as_const(heads(k, B, Tk, H, D)), as_const(heads(v, B, Tk, H, D)),
                            as_const(heads(out16, B, Tq, H, D)), lse_ref.data(), options);
    const std::pair<const char*, std::pair<std::vector<uint16_t>*, std::vector<float>*>> grads[] = {
        {"attention_backward_16bit dq", {&dq_bits, &dq_ref}},
        {"attention_backward_16bit dk", {&dk_bits, &dk_ref}},
        {"attention_backward_16bit dv", {&dv_bits, &dv_ref}}};
    for (const auto& [name, pair] : grads) {
      std::vector<float> got(pair.first->size());
      for (size_t i = 0; i < got.size(); ++i)
        got[i] = bf16 ? __bfloat162float(__nv_bfloat16{(*pair.first)[i]}) : __half2float(__half{(*pair.first)[i]});
      expect_close(name, got, *pair.second, bf16 ? 1.5e-2f : 2e-3f);  // P and dS are rounded to 16 bits too
    }
  }
}

void check_loss(std::mt19937& rng) {
  const int64_t N = 9, C = 40, V = 131;
  auto hidden = random_floats(N * C, rng), weight = random_floats(V * C, rng, 0.2f), bias = random_floats(V, rng);
  const std::vector<int64_t> label_rows = {0, 3, 4, 8}, targets = {5, 130, 0, 77};
  CrossEntropyLabels labels{label_rows.data(), targets.data(), 4};
  CrossEntropyOptions options;
  options.label_smoothing = 0.1f;
  options.grad_scale = 0.25f;
  std::vector<float> dh(N * C), dw(V * C), db(V), dh_ref(N * C), dw_ref(V * C), db_ref(V);
  const CrossEntropyResult got = cuda::linear_cross_entropy(rows(dh, N, C), rows(dw, V, C), db.data(),
                                                            crows(hidden, N, C), crows(weight, V, C), bias.data(),
                                                            labels, options, nullptr);
  const CrossEntropyResult want = ref::linear_cross_entropy(rows(dh_ref, N, C), rows(dw_ref, V, C), db_ref.data(),
                                                            crows(hidden, N, C), crows(weight, V, C), bias.data(),
                                                            labels, options);
  expect_close("linear_cross_entropy loss", {float(got.loss_sum)}, {float(want.loss_sum)}, 1e-5f);
  expect_close("linear_cross_entropy d_hidden", dh, dh_ref, 1e-4f);
  expect_close("linear_cross_entropy d_weight", dw, dw_ref, 1e-4f);
  expect_close("linear_cross_entropy d_bias", db, db_ref, 1e-4f);
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "reverse") == 0) simt::set_schedule(simt::Schedule::reverse);
    const bool with_barrier = std::strcmp(argv[i], "with-barrier") == 0;
    if (with_barrier || std::strcmp(argv[i], "missing-barrier") == 0) {
      std::vector<float> x(256, 1.0f);
      const float sum = simt_self_test::block_sum(x.data(), 256, 64, with_barrier);
      std::printf("block sum %s a barrier: %g\n", with_barrier ? "with" : "without", sum);
      return with_barrier && sum != 256.0f;
    }
    if (std::strcmp(argv[i], "static-shared-overflow") == 0) {
      simt_self_test::static_shared_overflow();
      return 0;
    }
    if (std::strcmp(argv[i], "dynamic-shared-overread") == 0) {
      std::printf("read %g\n", simt_self_test::dynamic_shared_overread(256));
      return 0;
    }
  }
  std::mt19937 rng(42);
  check_layer_norm(rng);
  check_gelu(rng);
  check_adamw(rng);
  check_attention(rng);
  check_attention_16bit(rng);
  check_loss(rng);
  std::printf("%s\n", g_failures ? "FAILED" : "all kernels match the reference");
  return g_failures ? 1 : 0;
}
