// AVX2 + FMA + F16C variant of the sparse FFN kernel (8 floats per step).
#include <immintrin.h>

#include "kernels/sparse_ffn_impl.hpp"

namespace tierlm::detail {

namespace {

template <DType D>
inline __m256 load8(const char* base, size_t i) {
  if constexpr (D == DType::kDTypeF32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(base) + i);
  } else if constexpr (D == DType::kDTypeF16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(
        reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(base) + i)));
  } else {
    const __m128i h = _mm_loadu_si128(
        reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(base) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

struct Isa {
  template <DType D>
  static float dot(const float* x, const char* w, size_t dim) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= dim; i += 16) {
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), load8<D>(w, i), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), load8<D>(w, i + 8), a1);
    }
    for (; i + 8 <= dim; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), load8<D>(w, i), a0);
    float s = hsum(_mm256_add_ps(a0, a1));
    for (; i < dim; ++i) s += x[i] * load_weight(w, D, i);
    return s;
  }

  template <DType D>
  static void axpy(float a, const char* w, float* y, size_t dim) {
    const __m256 va = _mm256_set1_ps(a);
    size_t i = 0;
    for (; i + 8 <= dim; i += 8) {
      _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, load8<D>(w, i), _mm256_loadu_ps(y + i)));
    }
    for (; i < dim; ++i) y[i] += a * load_weight(w, D, i);
  }
};

}  // namespace

void sparse_ffn_avx2(const float* x, const SparseFfnRows& rows, const int32_t* slots,
                     size_t n_slots, float* y) {
  sparse_ffn_run<Isa>(x, rows, slots, n_slots, y);
}

}  // namespace tierlm::detail
