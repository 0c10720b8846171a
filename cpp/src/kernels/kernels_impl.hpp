// Per-ISA kernel bodies behind the public launchers of tierlm/kernels.hpp. kernels.cpp checks
// arguments, splits work across the pool and calls the table of the current SIMD level;
// kernels_scalar.cpp is the reference, kernels_avx2.cpp / kernels_avx512.cpp the fast paths.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/quant_blocks.hpp"
#include "tierlm/kernels/kernels.hpp"

// The block types, as case labels: the 16-bit bodies list them so that a switch over DType stays
// exhaustive (-Wswitch names a new type) and still refuses them in one place.
#define TIERLM_CASE_BLOCK_DTYPES \
  case DType::kDTypeQ8_0:        \
  case DType::kDTypeQ4_0:        \
  case DType::kDTypeQ4_1:        \
  case DType::kDTypeQ5_0:        \
  case DType::kDTypeQ5_1:        \
  case DType::kDTypeQ4_K:        \
  case DType::kDTypeQ5_K:        \
  case DType::kDTypeQ6_K

namespace tierlm::detail {

// One KV head's cached rows (keys or values) as the attention bodies read them: token t's
// row_bytes bytes in dtype at row(t), through the layout's block list (tierlm/kernels.hpp).
struct KvHeadRows {
  const void* const* blocks = nullptr;
  size_t block_tokens = 1;
  size_t offset = 0;  // bytes from a block's start to this head's first row
  size_t row_bytes = 0;
  DType dtype = DType::kDTypeF32;

  const uint8_t* row(size_t t) const {
    return static_cast<const uint8_t*>(blocks[t / block_tokens]) + offset +
           (t % block_tokens) * row_bytes;
  }
};

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
  size_t q_pos = 0;  // position of the first query
  KvHeadRows k;      // this KV head's cache
  KvHeadRows v;
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
// Floats of one key tile's keys (or values) widened to f32 for the SIMD bodies: a compact or
// paged cache is read in place a tile at a time into this L1-sized buffer, never copied whole.
// One q8_0 block of slack: a row of head_dim % 32 != 0 dequantizes whole blocks.
inline size_t attention_stage_floats(size_t head_dim) {
  return (kAttentionKeyTile * head_dim + 32 + 15) / 16 * 16;
}
inline size_t attention_scratch_floats(size_t rows, size_t head_dim) {
  const size_t padded = (rows + 15) / 16 * 16;
  // transposed scaled queries [head_dim, padded], scores [key tile, padded], and per row:
  // causal limit, max, sum, correction; then the key and value stages.
  return padded * head_dim + padded * kAttentionKeyTile + 4 * padded +
         2 * attention_stage_floats(head_dim);
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

// The table of the calling thread's level (a KernelLevelPin, else simd_level()).
const KernelTable& kernels_current();
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

// Round to nearest even; overflow to infinity, NaN stays NaN (as F16C's vcvtps2ph).
inline uint16_t f32_to_f16(float f) {
  uint32_t x;
  __builtin_memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u)
    return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0));
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds past 65504
  if (abs < 0x38800000u) {  // subnormal f16 (or zero): round abs * 2^24 to an integer
    float a;
    __builtin_memcpy(&a, &abs, 4);
    const float scaled = a * 16777216.0f;  // exact: a power of two
    const uint32_t i = static_cast<uint32_t>(scaled);
    const float rest = scaled - static_cast<float>(i);
    const uint32_t r = i + (rest > 0.5f || (rest == 0.5f && (i & 1u)) ? 1u : 0u);
    return static_cast<uint16_t>(sign | r);
  }
  const uint32_t mant_rounded = abs + 0xfffu + ((abs >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((mant_rounded - 0x38000000u) >> 13));
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t x;
  __builtin_memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

inline float bf16_to_f32(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

// kernel_linear's rows [row0, row0 + part_rows) of Y[n, rows] (the other rows untouched) from
// w_part, which holds just those rows of W: a matrix streamed in row parts. bias, when given,
// is the whole matrix's.
void kernel_linear_part(const float* x, const void* w_part, const void* bias, DType w_dtype,
                        float* y, size_t n, size_t rows, size_t cols, size_t row0, size_t part_rows,
                        void* workspace);

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
    TIERLM_CASE_BLOCK_DTYPES:
      break;
  }
  fail_block_dtype("load_weight", dtype);
}

// Element c of a cached KV row in dtype (f32, f16, bf16 or q8_0 blocks): the scalar reference
// reads the cache element by element.
inline float kv_element(const uint8_t* row, DType dtype, size_t c) {
  if (dtype == DType::kDTypeQ8_0) {
    const auto* b = reinterpret_cast<const BlockQ8_0*>(row) + c / kBlock32;
    return f16_to_f32(b->d) * static_cast<float>(b->qs[c % kBlock32]);
  }
  return load_weight(row, dtype, c);
}

}  // namespace tierlm::detail
