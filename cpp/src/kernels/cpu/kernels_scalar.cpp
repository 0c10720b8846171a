// Scalar reference kernels: plain loops, f32 accumulation. Every SIMD variant is tested
// against these (and these against numpy/torch); TIERLM_SIMD=scalar selects them.
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/kernels_impl.hpp"

namespace tierlm::detail {

namespace {

struct WeightF32 {
  using Storage = float;
  static float load(const float* p, size_t i) { return p[i]; }
};
struct WeightF16 {
  using Storage = uint16_t;
  static float load(const uint16_t* p, size_t i) { return f16_to_f32(p[i]); }
};
struct WeightBF16 {
  using Storage = uint16_t;
  static float load(const uint16_t* p, size_t i) { return bf16_to_f32(p[i]); }
};

template <typename W>
void linear_rows(const float* x, const void* w_raw, const void* bias_raw, float* y, size_t n,
                 size_t rows, size_t cols, size_t r0, size_t r1) {
  const auto* w = static_cast<const typename W::Storage*>(w_raw);
  const auto* bias = static_cast<const typename W::Storage*>(bias_raw);
  for (size_t r = r0; r < r1; ++r) {
    const typename W::Storage* wr = w + r * cols;
    const float b = bias ? W::load(bias, r) : 0.0f;
    for (size_t i = 0; i < n; ++i) {
      const float* xi = x + i * cols;
      float sum = 0.0f;
      for (size_t c = 0; c < cols; ++c) sum += xi[c] * W::load(wr, c);
      y[i * rows + r] = sum + b;
    }
  }
}

void linear(const float* x, const void* w, const void* bias, DType w_dtype, float* y, size_t n,
            size_t rows, size_t cols, size_t r0, size_t r1) {
  switch (w_dtype) {
    case DType::kDTypeF32:
      return linear_rows<WeightF32>(x, w, bias, y, n, rows, cols, r0, r1);
    case DType::kDTypeF16:
      return linear_rows<WeightF16>(x, w, bias, y, n, rows, cols, r0, r1);
    case DType::kDTypeBF16:
      return linear_rows<WeightBF16>(x, w, bias, y, n, rows, cols, r0, r1);
    TIERLM_CASE_BLOCK_DTYPES:
      break;
  }
  fail_block_dtype("linear", w_dtype);
}

void rmsnorm(const float* x, const void* weight, DType w_dtype, float* y, size_t n, size_t dim,
             float eps) {
  for (size_t i = 0; i < n; ++i) {
    const float* xi = x + i * dim;
    float* yi = y + i * dim;
    float ss = 0.0f;
    for (size_t c = 0; c < dim; ++c) ss += xi[c] * xi[c];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
    for (size_t c = 0; c < dim; ++c) yi[c] = xi[c] * inv * load_weight(weight, w_dtype, c);
  }
}

void layernorm(const float* x, const void* weight, const void* bias, DType w_dtype, float* y,
               size_t n, size_t dim, float eps) {
  for (size_t i = 0; i < n; ++i) {
    const float* xi = x + i * dim;
    float* yi = y + i * dim;
    float sum = 0.0f;
    for (size_t c = 0; c < dim; ++c) sum += xi[c];
    const float mean = sum / static_cast<float>(dim);
    float var = 0.0f;
    for (size_t c = 0; c < dim; ++c) var += (xi[c] - mean) * (xi[c] - mean);
    const float inv = 1.0f / std::sqrt(var / static_cast<float>(dim) + eps);
    for (size_t c = 0; c < dim; ++c) {
      float v = (xi[c] - mean) * inv;
      if (weight) v *= load_weight(weight, w_dtype, c);
      if (bias) v += load_weight(bias, w_dtype, c);
      yi[c] = v;
    }
  }
}

void rope(float* x, const float* cos, const float* sin, size_t n_heads, size_t head_dim) {
  const size_t half = head_dim / 2;
  for (size_t h = 0; h < n_heads; ++h) {
    float* xh = x + h * head_dim;
    for (size_t i = 0; i < half; ++i) {
      const float a = xh[i];
      const float b = xh[i + half];
      xh[i] = a * cos[i] - b * sin[i];
      xh[i + half] = b * cos[i] + a * sin[i];
    }
  }
}

void silu_mul(const float* gate, const float* up, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void relu(float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void gelu(float* x, size_t n) {
  for (size_t i = 0; i < n; ++i)
    x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.70710678118654752f));
}

void add(float* y, const float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] += x[i];
}

void add_scaled(float* y, const float* x, float scale, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] += scale * x[i];
}

void convert(const void* src, DType dtype, float* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = load_weight(src, dtype, i);
}

void attention(const AttentionTile& t) {
  const size_t d = t.head_dim;
  const size_t rows = t.n_queries * t.group;
  float* scores = t.scratch;  // one key tile of one row
  for (size_t r = 0; r < rows; ++r) {
    const size_t qi = r / t.group;
    const float* q = t.q + qi * t.q_stride + (r % t.group) * d;
    const size_t end = std::min(t.key_end, t.q_pos + qi + 1);
    float* acc = t.acc + r * d;
    float m = -std::numeric_limits<float>::infinity();
    float l = 0.0f;
    for (size_t c = 0; c < d; ++c) acc[c] = 0.0f;
    for (size_t t0 = t.key_begin; t0 < end; t0 += kAttentionKeyTile) {
      const size_t t1 = std::min(end, t0 + kAttentionKeyTile);
      float tile_max = -std::numeric_limits<float>::infinity();
      for (size_t j = t0; j < t1; ++j) {
        const uint8_t* k = t.k.row(j);
        float s = 0.0f;
        for (size_t c = 0; c < d; ++c) s += q[c] * kv_element(k, t.k.dtype, c);
        s *= t.scale;
        scores[j - t0] = s;
        tile_max = std::max(tile_max, s);
      }
      const float m_new = std::max(m, tile_max);
      const float correction = std::exp(m - m_new);  // 0 when m is -inf
      l *= correction;
      for (size_t c = 0; c < d; ++c) acc[c] *= correction;
      for (size_t j = t0; j < t1; ++j) {
        const float p = std::exp(scores[j - t0] - m_new);
        l += p;
        const uint8_t* v = t.v.row(j);
        for (size_t c = 0; c < d; ++c) acc[c] += p * kv_element(v, t.v.dtype, c);
      }
      m = m_new;
    }
    t.m[r] = m;
    t.l[r] = l;
  }
}

}  // namespace

const KernelTable& kernels_scalar() {
  static const KernelTable kTable = {linear, rmsnorm, layernorm,  rope,    silu_mul, relu,
                                     gelu,   add,     add_scaled, convert, attention};
  return kTable;
}

}  // namespace tierlm::detail
