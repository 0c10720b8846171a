// Per-ISA kernel bodies behind the public launchers of tierlm/kernels.hpp. kernels.cpp checks
// arguments, splits work across the pool and calls the table of the current SIMD level;
// kernels_scalar.cpp is the reference, kernels_avx2.cpp / kernels_avx512.cpp the fast paths.
#pragma once

#include <cstddef>
#include <cstdint>

#include "tierlm/kernels/kernels.hpp"

namespace tierlm::detail {

// One unit of fused attention: the query rows of one KV-head group over one key range.
// Rows are (query, head-in-group) pairs, row r = query r / group, head r % group; the group's
// heads of one query are contiguous in q. Produces the unnormalised softmax state per row:
// m (running max of scaled scores), l (sum of exp(s - m)), acc (sum of exp(s - m) * v).
// Row r sees keys [key_begin, min(key_end, q_pos + r / group + 1)); a row with no key gets
// m = -inf, l = 0, acc = 0.
struct AttentionTile {
  const float* q = nullptr;  // first query's first head of the group
  size_t q_stride = 0;       // floats between consecutive queries
  size_t group = 1;          // query heads sharing this KV head
  size_t n_queries = 1;
  size_t q_pos = 0;          // position of the first query
  const float* k = nullptr;  // this KV head's cache, row t at k + t * head_dim
  const float* v = nullptr;
  size_t head_dim = 0;
  size_t key_begin = 0;
  size_t key_end = 0;
  float scale = 1.0f;
  float* acc = nullptr;      // [rows, head_dim]
  float* m = nullptr;        // [rows]
  float* l = nullptr;        // [rows]
  float* scratch = nullptr;  // attention_scratch_floats(rows, head_dim) floats, 64-byte aligned
};

// Keys per tile of the attention inner loop, and the scratch one tile call needs.
constexpr size_t kAttentionKeyTile = 64;
inline size_t attention_scratch_floats(size_t rows, size_t head_dim) {
  const size_t padded = (rows + 15) / 16 * 16;
  // transposed scaled queries [head_dim, padded], scores [key tile, padded], and per row:
  // causal limit, max, sum, correction.
  return padded * head_dim + padded * kAttentionKeyTile + 4 * padded;
}

struct KernelTable {
  // Y[:, r0:r1] for all n tokens (see kernel_linear).
  void (*linear)(const float* x, const void* w, const void* bias, DType w_dtype, float* y, size_t n,
                 size_t rows, size_t cols, size_t r0, size_t r1);
  void (*rmsnorm)(const float* x, const void* weight, DType w_dtype, float* y, size_t n, size_t dim,
                  float eps);
  void (*layernorm)(const float* x, const void* weight, const void* bias, DType w_dtype, float* y,
                    size_t n, size_t dim, float eps);
  // Rotates one token's n_heads heads with its cos/sin (head_dim / 2 entries each).
  void (*rope)(float* x, const float* cos, const float* sin, size_t n_heads, size_t head_dim);
  void (*silu_mul)(const float* gate, const float* up, float* out, size_t n);
  void (*relu)(float* x, size_t n);
  void (*gelu)(float* x, size_t n);
  void (*add)(float* y, const float* x, size_t n);
  void (*add_scaled)(float* y, const float* x, float scale, size_t n);  // y += scale * x
  void (*convert)(const void* src, DType dtype, float* dst, size_t n);
  void (*attention)(const AttentionTile& tile);
};

// Pins the SIMD level of the kernel_* launchers called on this thread while it lives (the CPU
// backend at a fixed level, tests/cpp/test_backend_ops.cpp); -1 follows simd_level(). Work the
// pool runs for a launcher uses the table the calling thread chose, so the pin covers it.
class KernelLevelPin {
 public:
  explicit KernelLevelPin(int level);
  ~KernelLevelPin();
  KernelLevelPin(const KernelLevelPin&) = delete;
  KernelLevelPin& operator=(const KernelLevelPin&) = delete;

 private:
  int saved_;
};

const KernelTable& kernels_scalar();
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();

// Scalar conversions shared by every level.
inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ffu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

inline float bf16_to_f32(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

// Thrown where a per-element kernel body meets a block type. The launchers refuse block types
// (or route them to the quantized kernels) first, so reaching it is a bug in tierlm.
[[noreturn]] void fail_block_dtype(const char* kernel, DType dtype);
// The converse, for the quantized bodies.
[[noreturn]] void fail_not_block_dtype(const char* kernel, DType dtype);

inline float load_weight(const void* w, DType dtype, size_t i) {
  switch (dtype) {
    case DType::kDTypeF32:
      return static_cast<const float*>(w)[i];
    case DType::kDTypeF16:
      return f16_to_f32(static_cast<const uint16_t*>(w)[i]);
    case DType::kDTypeBF16:
      return bf16_to_f32(static_cast<const uint16_t*>(w)[i]);
    case DType::kDTypeQ8_0:
    case DType::kDTypeQ4_0:
    case DType::kDTypeQ4_1:
    case DType::kDTypeQ5_0:
    case DType::kDTypeQ5_1:
    case DType::kDTypeQ4_K:
    case DType::kDTypeQ5_K:
    case DType::kDTypeQ6_K:
      break;
  }
  fail_block_dtype("load_weight", dtype);
}

}  // namespace tierlm::detail
