// The sparse FFN's row reads (see sparse_row_loader.hpp): gathers requests into staging until
// it or the request table is full, then one pread_batch, one wait, and the row copies.
#include "sparse/sparse_row_loader.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <span>
#include <utility>
#include <vector>

#include "tierlm/core/align.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm::detail {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

SparseRowLoader::SparseRowLoader(HostBuffer staging, IoRequest* requests, uint64_t* pending_a,
                                 uint64_t* pending_b, size_t max_requests, bool bundled)
    : staging_(std::move(staging)),
      requests_(requests),
      pending_a_(pending_a),
      pending_b_(pending_b),
      max_requests_(max_requests),
      bundled_(bundled) {}

void SparseRowLoader::flush(File& file, const SparseLayerPlan& p, NeuronCache& cache,
                            SparseTokenInfo& info) {
  if (n_pending_ == 0) return;
  const auto t0 = Clock::now();
  std::vector<IoFuture> futures =
      file.pread_batch(std::span<const IoRequest>(requests_, n_requests_));
  try {
    io_wait_all(futures);
  } catch (const Error&) {
    // The batch is dropped: the next token starts from an empty staging area and reads again.
    n_pending_ = 0;
    n_requests_ = 0;
    used_ = 0;
    throw;
  }
  info.io_seconds += since(t0);
  info.requests += n_requests_;
  for (size_t i = 0; i < n_requests_; ++i) info.bytes_read += requests_[i].len;
  const auto t1 = Clock::now();
  const size_t first = cache.size();
  cache.insert(pending_ids_, n_pending_, nullptr);
  const char* stage = static_cast<const char*>(staging_.data());
  const size_t part = p.up_part_bytes();
  for (size_t j = 0; j < n_pending_; ++j) {
    char* row = static_cast<char*>(cache.row(first + j));
    if (bundled_) {
      std::memcpy(row, stage + pending_a_[j], p.row_bytes);
    } else {
      std::memcpy(row, stage + pending_a_[j], part);
      std::memcpy(row + part, stage + pending_b_[j], p.row_bytes - part);
    }
  }
  info.memory_seconds += since(t1);
  n_pending_ = 0;
  n_requests_ = 0;
  used_ = 0;
}

void SparseRowLoader::load(File& file, const SparseLayerPlan& p, NeuronCache& cache,
                           const int32_t* ids, size_t n, SparseTokenInfo& info) {
  const uint64_t rb = p.row_bytes;
  const uint64_t cap = staging_.size();
  char* stage = static_cast<char*>(staging_.data());
  pending_ids_ = ids;
  uint64_t cur_lo = 0, cur_hi = 0, cur_stage = 0;
  bool open = false;
  auto close = [&] {
    if (!open) return;
    requests_[n_requests_++] = {stage + cur_stage, static_cast<size_t>(cur_hi - cur_lo), cur_lo};
    open = false;
  };
  for (size_t j = 0; j < n; ++j) {
    const uint64_t a = static_cast<uint64_t>(ids[j]) * rb;
    if (bundled_) {
      const uint64_t lo = round_down(a, kAlignment);
      const uint64_t hi = std::min(round_up(a + rb, kAlignment), p.file_bytes);
      if (open && lo <= cur_hi && used_ + (std::max(hi, cur_hi) - cur_hi) <= cap) {
        used_ += std::max(hi, cur_hi) - cur_hi;
        cur_hi = std::max(hi, cur_hi);
      } else {
        close();
        if (used_ + (hi - lo) > cap || n_requests_ + 1 > max_requests_) {
          flush(file, p, cache, info);
          pending_ids_ = ids + j;
        }
        cur_lo = lo;
        cur_hi = hi;
        cur_stage = used_;
        used_ += hi - lo;
        open = true;
      }
      pending_a_[n_pending_++] = cur_stage + (a - cur_lo);
    } else {
      const uint64_t part = p.up_part_bytes();
      const uint64_t ulo = round_down(a, kAlignment), uhi = round_up(a + part, kAlignment);
      const uint64_t dlo = round_down(a + part, kAlignment);
      const uint64_t dhi = std::min(round_up(a + rb, kAlignment), p.file_bytes);
      if (used_ + (uhi - ulo) + (dhi - dlo) > cap || n_requests_ + 2 > max_requests_) {
        flush(file, p, cache, info);
        pending_ids_ = ids + j;
      }
      requests_[n_requests_++] = {stage + used_, static_cast<size_t>(uhi - ulo), ulo};
      pending_a_[n_pending_] = used_ + (a - ulo);
      used_ += uhi - ulo;
      requests_[n_requests_++] = {stage + used_, static_cast<size_t>(dhi - dlo), dlo};
      pending_b_[n_pending_++] = used_ + (a + part - dlo);
      used_ += dhi - dlo;
    }
  }
  close();
  flush(file, p, cache, info);
  info.neurons_read += n;
}

}  // namespace tierlm::detail
