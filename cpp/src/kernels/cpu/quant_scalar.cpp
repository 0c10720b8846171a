// Scalar reference of the quantized kernels: GGUF block dequantization with ggml's arithmetic
// (dequantize_row_q*), the int8 activation quantizer, and the integer-dot linear that every
// SIMD level reproduces up to the order of its f32 sums. TIERLM_SIMD=scalar selects it.
#include <cmath>
#include <cstdlib>
#include <type_traits>

#include "kernels/kernels_impl.hpp"
#include "kernels/quant_impl.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm::detail {

namespace {

// ---- weight blocks: integer values and scales ---------------------------------------------

// Nibble j and j + 16 of a 32-block's qs.
inline int nibble(const uint8_t* qs, size_t j) { return j < 16 ? qs[j] & 0x0f : qs[j - 16] >> 4; }
inline int high_bit(const uint8_t* qh, size_t j) {
  uint32_t bits;
  std::memcpy(&bits, qh, 4);
  return static_cast<int>((bits >> j) & 1u) << 4;
}

// Per 32-block type: q(b, j) the stored integer of element j, value = (q - kOffset) * d, or
// q * d + m with kMin.
struct Q8_0 {
  using Block = BlockQ8_0;
  static constexpr int kOffset = 0;
  static constexpr bool kMin = false;
  static int q(const Block& b, size_t j) { return b.qs[j]; }
};
struct Q4_0 {
  using Block = BlockQ4_0;
  static constexpr int kOffset = 8;
  static constexpr bool kMin = false;
  static int q(const Block& b, size_t j) { return nibble(b.qs, j); }
};
struct Q4_1 {
  using Block = BlockQ4_1;
  static constexpr int kOffset = 0;
  static constexpr bool kMin = true;
  static int q(const Block& b, size_t j) { return nibble(b.qs, j); }
};
struct Q5_0 {
  using Block = BlockQ5_0;
  static constexpr int kOffset = 16;
  static constexpr bool kMin = false;
  static int q(const Block& b, size_t j) { return nibble(b.qs, j) | high_bit(b.qh, j); }
};
struct Q5_1 {
  using Block = BlockQ5_1;
  static constexpr int kOffset = 0;
  static constexpr bool kMin = true;
  static int q(const Block& b, size_t j) { return nibble(b.qs, j) | high_bit(b.qh, j); }
};

template <class T>
float block_min(const typename T::Block& b) {
  if constexpr (T::kMin)
    return f16_to_f32(b.m);
  else
    return 0.0f;
}

// A k-type super-block unpacked: q[256] stored integers, and per group (32 elements for
// q4_k / q5_k, 16 for q6_k) an integer scale and min.
struct KUnpacked {
  int q[256];
  int scale[16];
  int min[16];
};

void unpack(const BlockQ4_K& b, KUnpacked& u) {
  uint64_t sc, mn;
  k4_scale_min(b.scales, &sc, &mn);
  for (size_t i = 0; i < 8; ++i) {
    u.scale[i] = static_cast<int>((sc >> (8 * i)) & 0xff);
    u.min[i] = static_cast<int>((mn >> (8 * i)) & 0xff);
  }
  for (size_t i = 0; i < 4; ++i)
    for (size_t l = 0; l < 32; ++l) {
      u.q[64 * i + l] = b.qs[32 * i + l] & 0x0f;
      u.q[64 * i + 32 + l] = b.qs[32 * i + l] >> 4;
    }
}

void unpack(const BlockQ5_K& b, KUnpacked& u) {
  uint64_t sc, mn;
  k4_scale_min(b.scales, &sc, &mn);
  for (size_t i = 0; i < 8; ++i) {
    u.scale[i] = static_cast<int>((sc >> (8 * i)) & 0xff);
    u.min[i] = static_cast<int>((mn >> (8 * i)) & 0xff);
  }
  for (size_t i = 0; i < 4; ++i)
    for (size_t l = 0; l < 32; ++l) {
      u.q[64 * i + l] = (b.qs[32 * i + l] & 0x0f) | (((b.qh[l] >> (2 * i)) & 1) << 4);
      u.q[64 * i + 32 + l] = (b.qs[32 * i + l] >> 4) | (((b.qh[l] >> (2 * i + 1)) & 1) << 4);
    }
}

void unpack(const BlockQ6_K& b, KUnpacked& u) {
  for (size_t g = 0; g < 16; ++g) {
    u.scale[g] = b.scales[g];
    u.min[g] = 0;
  }
  for (size_t h = 0; h < 2; ++h)
    for (size_t k = 0; k < 4; ++k)
      for (size_t l = 0; l < 32; ++l) {
        const uint8_t low = b.ql[64 * h + 32 * (k % 2) + l];
        const int nib = k < 2 ? low & 0x0f : low >> 4;
        u.q[128 * h + 32 * k + l] = nib | (((b.qh[32 * h + l] >> (2 * k)) & 3) << 4);
      }
}

// ---- dequantization (ggml's float arithmetic, operation for operation) ------------------------

template <class T>
void dequantize_blocks32(const void* src, float* y, size_t nb) {
  const auto* blocks = static_cast<const typename T::Block*>(src);
  for (size_t i = 0; i < nb; ++i) {
    const typename T::Block& b = blocks[i];
    const float d = f16_to_f32(b.d);
    const float m = block_min<T>(b);
    for (size_t j = 0; j < kBlock32; ++j) {
      if constexpr (T::kMin)
        y[i * kBlock32 + j] = static_cast<float>(T::q(b, j)) * d + m;
      else
        y[i * kBlock32 + j] = static_cast<float>(T::q(b, j) - T::kOffset) * d;
    }
  }
}

// q4_k / q5_k: (d * scale) * q - (dmin * min) per sub-block of 32.
template <class Block>
void dequantize_k4(const void* src, float* y, size_t nb) {
  const auto* blocks = static_cast<const Block*>(src);
  KUnpacked u;
  for (size_t i = 0; i < nb; ++i) {
    unpack(blocks[i], u);
    const float d = f16_to_f32(blocks[i].d), dmin = f16_to_f32(blocks[i].dmin);
    for (size_t s = 0; s < 8; ++s) {
      const float ds = d * static_cast<float>(u.scale[s]);
      const float ms = dmin * static_cast<float>(u.min[s]);
      for (size_t l = 0; l < 32; ++l)
        y[i * kBlock256 + 32 * s + l] = ds * static_cast<float>(u.q[32 * s + l]) - ms;
    }
  }
}

// q6_k: d * scale * (q - 32) per group of 16.
void dequantize_q6_k(const void* src, float* y, size_t nb) {
  const auto* blocks = static_cast<const BlockQ6_K*>(src);
  KUnpacked u;
  for (size_t i = 0; i < nb; ++i) {
    unpack(blocks[i], u);
    const float d = f16_to_f32(blocks[i].d);
    for (size_t e = 0; e < kBlock256; ++e)
      y[i * kBlock256 + e] =
          d * static_cast<float>(u.scale[e / 16]) * static_cast<float>(u.q[e] - 32);
  }
}

// ---- activations ------------------------------------------------------------------------------

template <size_t N>
float quantize_span(const float* x, int8_t* q) {
  float amax = 0.0f;
  for (size_t j = 0; j < N; ++j) amax = std::fmax(amax, std::fabs(x[j]));
  float d;
  const float id = quant_act_inverse(amax, &d);
  for (size_t j = 0; j < N; ++j) q[j] = static_cast<int8_t>(std::nearbyint(x[j] * id));
  return d;
}

void quantize_rows(const float* x, DType w_dtype, void* xq, size_t n, size_t cols) {
  if (quant_is_k_type(w_dtype)) {
    auto* out = static_cast<ActBlock256*>(xq);
    const size_t nb = cols / kBlock256;
    for (size_t i = 0; i < n * nb; ++i) {
      ActBlock256& a = out[i];
      a.d = quantize_span<kBlock256>(x + i * kBlock256, a.q);
      for (size_t g = 0; g < 16; ++g) {
        int sum = 0;
        for (size_t j = 0; j < 16; ++j) sum += a.q[16 * g + j];
        a.sums[g] = static_cast<int16_t>(sum);
      }
      for (size_t s = 0; s < 8; ++s)
        a.sums32[s] = static_cast<int16_t>(a.sums[2 * s] + a.sums[2 * s + 1]);
    }
    return;
  }
  const size_t nb = cols / kBlock32;
  for (size_t t = 0; t < n; ++t) {
    Act32Row<false> a(static_cast<char*>(xq) + t * act32_row_bytes(nb), nb);
    for (size_t b = 0; b < nb; ++b) {
      int8_t q[kBlock32];
      a.d[b] = quantize_span<kBlock32>(x + t * cols + b * kBlock32, q);
      int sum = 0;
      for (size_t j = 0; j < kBlock32; ++j) {
        a.q[act32_index(nb, b, j)] = q[j];
        sum += q[j];
      }
      a.s[b] = a.d[b] * static_cast<float>(sum);
    }
  }
}

// ---- dot products of one weight row with one activation row --------------------------------

// Per block: (d_w * d_x) * sum(q_w * q_x) + m_w * s_x, where a type with an offset has
// m_w = -offset * d_w (so (q - offset) * d needs no signed unpacking).
template <class T>
float row_dot32(const void* row, const void* x_row, size_t nb) {
  const auto* w = static_cast<const typename T::Block*>(row);
  const Act32Row<true> x(x_row, nb);
  float acc = 0.0f;
  for (size_t b = 0; b < nb; ++b) {
    int isum = 0;
    for (size_t j = 0; j < kBlock32; ++j) isum += T::q(w[b], j) * x.q[act32_index(nb, b, j)];
    const float d = f16_to_f32(w[b].d);
    const float m = T::kMin ? block_min<T>(w[b]) : -static_cast<float>(T::kOffset) * d;
    acc += d * x.d[b] * static_cast<float>(isum) + m * x.s[b];
  }
  return acc;
}

// Per super-block: (d * d_x) * sum_g scale_g * (sum q_w * q_x - 32 sum_g q_x)   (q6_k)
//                  (d * d_x) * sum_g scale_g * sum q_w * q_x - (dmin * d_x) * sum_g min_g *
//                  sum_g q_x                                                      (q4_k, q5_k)
template <class Block>
float row_dot256(const void* row, const void* x_row, size_t nb) {
  const auto* w = static_cast<const Block*>(row);
  const auto* x = static_cast<const ActBlock256*>(x_row);
  constexpr bool kQ6 = std::is_same_v<Block, BlockQ6_K>;
  constexpr size_t kGroup = kQ6 ? 16 : 32;
  KUnpacked u;
  float acc = 0.0f;
  for (size_t b = 0; b < nb; ++b) {
    unpack(w[b], u);
    int isum = 0, msum = 0;
    for (size_t g = 0; g < kBlock256 / kGroup; ++g) {
      int dot = 0;
      for (size_t l = 0; l < kGroup; ++l) dot += u.q[kGroup * g + l] * x[b].q[kGroup * g + l];
      const int xsum = kQ6 ? x[b].sums[g] : x[b].sums[2 * g] + x[b].sums[2 * g + 1];
      if constexpr (kQ6)
        dot -= 32 * xsum;
      else
        msum += u.min[g] * xsum;
      isum += u.scale[g] * dot;
    }
    const float d = f16_to_f32(w[b].d) * x[b].d;
    if constexpr (kQ6)
      acc += d * static_cast<float>(isum);
    else
      acc +=
          d * static_cast<float>(isum) - f16_to_f32(w[b].dmin) * x[b].d * static_cast<float>(msum);
  }
  return acc;
}

template <float (*Dot)(const void*, const void*, size_t)>
void linear_rows(const void* xq, const void* w, const float* bias, DType w_dtype, float* y,
                 size_t n, size_t rows, size_t cols, size_t r0, size_t r1) {
  const size_t row_bytes = dtype_row_bytes(w_dtype, cols);
  const size_t nb = cols / dtype_block(w_dtype).elems;
  const size_t act_bytes = quant_act_row_bytes(w_dtype, cols);
  for (size_t r = r0; r < r1; ++r) {
    const void* row = static_cast<const char*>(w) + r * row_bytes;
    for (size_t t = 0; t < n; ++t)
      y[t * rows + r] =
          Dot(row, static_cast<const char*>(xq) + t * act_bytes, nb) + (bias ? bias[r] : 0.0f);
  }
}

void linear(const void* xq, const void* w, const float* bias, DType w_dtype, float* y, size_t n,
            size_t rows, size_t cols, size_t r0, size_t r1) {
  switch (w_dtype) {
    case DType::kDTypeQ8_0:
      return linear_rows<row_dot32<Q8_0>>(xq, w, bias, w_dtype, y, n, rows, cols, r0, r1);
    case DType::kDTypeQ4_0:
      return linear_rows<row_dot32<Q4_0>>(xq, w, bias, w_dtype, y, n, rows, cols, r0, r1);
    case DType::kDTypeQ4_1:
      return linear_rows<row_dot32<Q4_1>>(xq, w, bias, w_dtype, y, n, rows, cols, r0, r1);
    case DType::kDTypeQ5_0:
      return linear_rows<row_dot32<Q5_0>>(xq, w, bias, w_dtype, y, n, rows, cols, r0, r1);
    case DType::kDTypeQ5_1:
      return linear_rows<row_dot32<Q5_1>>(xq, w, bias, w_dtype, y, n, rows, cols, r0, r1);
    case DType::kDTypeQ4_K:
      return linear_rows<row_dot256<BlockQ4_K>>(xq, w, bias, w_dtype, y, n, rows, cols, r0, r1);
    case DType::kDTypeQ5_K:
      return linear_rows<row_dot256<BlockQ5_K>>(xq, w, bias, w_dtype, y, n, rows, cols, r0, r1);
    case DType::kDTypeQ6_K:
      return linear_rows<row_dot256<BlockQ6_K>>(xq, w, bias, w_dtype, y, n, rows, cols, r0, r1);
    case DType::kDTypeF32:
    case DType::kDTypeF16:
    case DType::kDTypeBF16:
      break;
  }
  fail_not_block_dtype("quantized linear", w_dtype);
}

}  // namespace

void dequantize_row(const void* src, DType dtype, float* dst, size_t n) {
  const size_t nb = n / dtype_block(dtype).elems;
  switch (dtype) {
    case DType::kDTypeQ8_0:
      return dequantize_blocks32<Q8_0>(src, dst, nb);
    case DType::kDTypeQ4_0:
      return dequantize_blocks32<Q4_0>(src, dst, nb);
    case DType::kDTypeQ4_1:
      return dequantize_blocks32<Q4_1>(src, dst, nb);
    case DType::kDTypeQ5_0:
      return dequantize_blocks32<Q5_0>(src, dst, nb);
    case DType::kDTypeQ5_1:
      return dequantize_blocks32<Q5_1>(src, dst, nb);
    case DType::kDTypeQ4_K:
      return dequantize_k4<BlockQ4_K>(src, dst, nb);
    case DType::kDTypeQ5_K:
      return dequantize_k4<BlockQ5_K>(src, dst, nb);
    case DType::kDTypeQ6_K:
      return dequantize_q6_k(src, dst, nb);
    case DType::kDTypeF32:
    case DType::kDTypeF16:
    case DType::kDTypeBF16:
      break;
  }
  fail_not_block_dtype("dequantize", dtype);
}

namespace {

// y += a * w, one block dequantized at a time.
void axpy(float a, const void* w, DType w_dtype, float* y, size_t cols) {
  const DTypeBlock block = dtype_block(w_dtype);
  float v[kBlock256];
  for (size_t b = 0; b < cols / block.elems; ++b) {
    dequantize_row(static_cast<const char*>(w) + b * block.bytes, w_dtype, v, block.elems);
    for (size_t j = 0; j < block.elems; ++j) y[b * block.elems + j] += a * v[j];
  }
}

}  // namespace

const QuantKernels& quant_kernels_scalar() {
  static const QuantKernels kTable = {quantize_rows, linear, axpy};
  return kTable;
}

}  // namespace tierlm::detail
