// Old (A) vs new (B) quantized matrix-vector kernels linked into one binary (run.sh builds it):
// thread CPU time per byte of weights, A / B, median of interleaved pairs (alternating order),
// so that other load on the machine costs both alike. Outputs are compared first (bits and
// size). From DRAM a third contender, a plain 256-bit read of the same bytes on the same
// threads, gives each kernel's fraction of that read.
//   ab hot  TYPE ROWS COLS REPS TRIALS            one thread, one matrix again and again (L1/L2)
//   ab dram TYPE ROWS COLS WS_MIB TRIALS [THREADS]  copies of the matrix over WS_MIB, the rows
//                                                   split across THREADS (2)
// NTOK=n sets the tokens (1: decode); NOCHECK=1 times outputs that differ.
#include <immintrin.h>
#include <sys/mman.h>
#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "kernels/quant_impl.hpp"
using namespace tierlm;
using namespace tierlm::detail;
using Fn = void (*)(const void*, const void*, DType, float*, size_t, size_t, size_t, size_t,
                    size_t);
using Prep = void* (*)(const float*, DType, size_t, size_t);
void va(const void*, const void*, DType, float*, size_t, size_t, size_t, size_t, size_t);
void vb(const void*, const void*, DType, float*, size_t, size_t, size_t, size_t, size_t);
void* va_prepare(const float*, DType, size_t, size_t);
void* vb_prepare(const float*, DType, size_t, size_t);
static double tcpu() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}
static double twall() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}
struct T {
  const char* name;
  DType dt;
  size_t bb, be;
  std::vector<size_t> d16;
};
static const T kTypes[] = {
    {"q8_0", DType::kDTypeQ8_0, 34, 32, {0}},      {"q4_0", DType::kDTypeQ4_0, 18, 32, {0}},
    {"q4_1", DType::kDTypeQ4_1, 20, 32, {0, 2}},   {"q5_0", DType::kDTypeQ5_0, 22, 32, {0}},
    {"q5_1", DType::kDTypeQ5_1, 24, 32, {0, 2}},   {"q4_k", DType::kDTypeQ4_K, 144, 256, {0, 2}},
    {"q5_k", DType::kDTypeQ5_K, 176, 256, {0, 2}}, {"q6_k", DType::kDTypeQ6_K, 210, 256, {208}}};
static double med(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
static double pct(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[(size_t)(p * (v.size() - 1))];
}
int main(int argc, char** argv) {
  const T* ty = nullptr;
  if (argc >= 7)
    for (auto& t : kTypes)
      if (!strcmp(argv[2], t.name)) ty = &t;
  if (!ty || (strcmp(argv[1], "hot") && strcmp(argv[1], "dram"))) {
    fprintf(stderr,
            "usage: ab hot|dram TYPE ROWS COLS REPS|WS_MIB TRIALS [THREADS] (TYPE: q8_0 "
            "q4_0 q4_1 q5_0 q5_1 q4_k q5_k q6_k)\n");
    return 1;
  }
  bool hot = !strcmp(argv[1], "hot");
  size_t rows = atol(argv[3]), cols = atol(argv[4]);
  double arg5 = atof(argv[5]);
  int trials = atoi(argv[6]);
  int nthreads = hot ? 1 : (argc > 7 ? atoi(argv[7]) : 2);
  size_t n = getenv("NTOK") ? atol(getenv("NTOK")) : 1;
  size_t mbytes = rows * cols / ty->be * ty->bb;
  size_t copies = hot ? 1 : std::max<size_t>(1, (size_t)(arg5 * (1 << 20)) / mbytes);
  int reps = hot ? (int)arg5 : 1;
  size_t total = copies * mbytes;
  char* w = (char*)aligned_alloc(1 << 21, (total + (1 << 21)) / (1 << 21) * (1 << 21));
  madvise(w, total, MADV_HUGEPAGE);
  std::mt19937_64 rng(1);
  for (size_t i = 0; i < total / 8; ++i) ((uint64_t*)w)[i] = rng();
  for (size_t b = 0; b < total / ty->bb; ++b)
    for (size_t o : ty->d16) {
      uint16_t h = 0x2000 + (rng() & 0x3ff);
      memcpy(w + b * ty->bb + o, &h, 2);
    }
  std::vector<float> x(n * cols);
  std::normal_distribution<float> nd01;
  for (auto& v : x) v = nd01(rng);
  void* xa = va_prepare(x.data(), ty->dt, n, cols);
  void* xb = vb_prepare(x.data(), ty->dt, n, cols);
  std::vector<float> ya(n * rows), yb(n * rows);
  va(xa, w, ty->dt, ya.data(), n, rows, cols, 0, rows);
  vb(xb, w, ty->dt, yb.data(), n, rows, cols, 0, rows);
  double maxd = 0, maxa = 0;
  size_t ndiff = 0;
  for (size_t r = 0; r < n * rows; ++r) {
    maxd = std::max(maxd, (double)fabsf(ya[r] - yb[r]));
    maxa = std::max(maxa, (double)fabsf(ya[r]));
    ndiff += memcmp(&ya[r], &yb[r], 4) != 0;
  }
  printf(
      "%s %s %zux%zu n=%zu copies %zu (%.2f MiB) threads %d: %zu outputs differ in bits, maxdiff "
      "%.3g of %.3g\n",
      argv[1], ty->name, rows, cols, n, copies, total / 1048576.0, nthreads, ndiff, maxd, maxa);
  if (maxd > 1e-4 * maxa + 1e-6 && !getenv("NOCHECK")) {
    printf("MISMATCH\n");
    return 2;
  }
  std::vector<float> y(n * rows);
  // contender 2: a plain read of the same bytes (256-bit loads, xor), the kernel-level bound
  static volatile long long sink;
  auto read_rows = [&](const char* wm, size_t r0, size_t r1) {
    const size_t rb = mbytes / rows;
    const char* p = wm + r0 * rb;
    const char* e = wm + r1 * rb;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0;
    for (; p + 64 <= e; p += 64) {
      a0 = _mm256_xor_si256(a0, _mm256_loadu_si256((const __m256i*)p));
      a1 = _mm256_xor_si256(a1, _mm256_loadu_si256((const __m256i*)(p + 32)));
    }
    sink = _mm256_extract_epi64(_mm256_xor_si256(a0, a1), 0);
  };
  auto run = [&](int b, double* cpu, double* wall) {
    Fn f = b == 1 ? vb : va;
    void* xq = b == 1 ? xb : xa;
    auto one = [&](const char* wm, size_t r0, size_t r1) {
      if (b == 2)
        read_rows(wm, r0, r1);
      else
        f(xq, wm, ty->dt, y.data(), n, rows, cols, r0, r1);
    };
    double w0 = twall();
    if (nthreads == 1) {
      double c0 = tcpu();
      for (int i = 0; i < reps; ++i)
        for (size_t m = 0; m < copies; ++m) one(w + m * mbytes, 0, rows);
      *cpu = tcpu() - c0;
    } else {
      std::vector<double> c(nthreads);
      std::vector<std::thread> th;
      for (int t = 0; t < nthreads; ++t)
        th.emplace_back([&, t] {
          size_t r0 = rows * t / nthreads, r1 = rows * (t + 1) / nthreads;
          double c0 = tcpu();
          for (int i = 0; i < reps; ++i)
            for (size_t m = 0; m < copies; ++m) one(w + m * mbytes, r0, r1);
          c[t] = tcpu() - c0;
        });
      for (auto& t : th) t.join();
      *cpu = 0;
      for (double v : c) *cpu += v;
    }
    *wall = twall() - w0;
  };
  double c, wl;
  run(0, &c, &wl);
  run(1, &c, &wl);
  std::vector<double> rc, rw, ca, cb, wa, wb, ra, rb_;
  const bool with_read = !hot;
  double bytes = (double)total * reps;
  for (int i = 0; i < trials; ++i) {
    double c1, w1, c2, w2;
    if (i % 2) {
      run(1, &c2, &w2);
      run(0, &c1, &w1);
    } else {
      run(0, &c1, &w1);
      run(1, &c2, &w2);
    }
    if (with_read) {
      double c3, w3;
      run(2, &c3, &w3);
      ra.push_back(c3 / c1);
      rb_.push_back(c3 / c2);
    }
    rc.push_back(c1 / c2);
    rw.push_back(w1 / w2);
    ca.push_back(bytes / c1 * nthreads / 1e9);
    cb.push_back(bytes / c2 * nthreads / 1e9);
    wa.push_back(bytes / w1 / 1e9);
    wb.push_back(bytes / w2 / 1e9);
  }
  printf(
      "  B/A cpu-time speedup median %.3f (quartiles %.3f %.3f) wall %.3f | A GB/s per "
      "thread-cpu-s med %.2f best %.2f | B med %.2f best %.2f | wall A %.2f B %.2f\n",
      med(rc), pct(rc, 0.25), pct(rc, 0.75), med(rw), med(ca) / nthreads,
      *std::max_element(ca.begin(), ca.end()) / nthreads, med(cb) / nthreads,
      *std::max_element(cb.begin(), cb.end()) / nthreads, med(wa), med(wb));
  if (with_read)
    printf("  of read bound (read cpu / kernel cpu, median): A %.3f B %.3f\n", med(ra), med(rb_));
}
