// Batching: the forward entry points check a request (tokens, slots, context room), claim the
// model for one thread, cut a prompt into prefill batches of at most chunk rows, and hand each
// batch to the executor.

#include "core/clock.hpp"
#include "model/model_impl.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm {

namespace {

std::unique_lock<std::mutex> claim(std::mutex& busy) {
  std::unique_lock lock(busy, std::try_to_lock);
  TIERLM_CHECK(lock.owns_lock(), kErrorInvalidArgument,
               "the model is already running on another thread; use one Model per thread");
  return lock;
}

void check_tokens(std::span<const int32_t> tokens, int64_t vocab) {
  TIERLM_CHECK(!tokens.empty(), kErrorInvalidArgument,
               "empty prompt: give at least one token (a text prompt that tokenizes to nothing?)");
  for (size_t i = 0; i < tokens.size(); ++i) {
    TIERLM_CHECK(tokens[i] >= 0 && tokens[i] < vocab, kErrorInvalidArgument, "token id ", tokens[i],
                 " at index ", i, " is outside the vocabulary (0..", vocab - 1, ")");
  }
}

}  // namespace

void Model::reset() {
  auto lock = claim(impl_->busy);
  impl_->executor->clear_all();
  ++impl_->sequence;
  if (impl_->sparse) impl_->sparse->reset();
}

const float* Model::forward(std::span<const int32_t> tokens) { return forward(tokens, false); }

const float* Model::forward(std::span<const int32_t> tokens, bool restart) {
  return forward_slot(0, tokens, restart);
}

const float* Model::forward_slot(int32_t slot, std::span<const int32_t> tokens, bool restart) {
  Impl& m = *impl_;
  auto lock = claim(m.busy);
  TIERLM_CHECK(slot >= 0 && slot < m.max_batch, kErrorInvalidArgument, "slot ", slot,
               " is outside 0..", m.max_batch - 1, " (load the model with a larger max_batch)");
  if (restart) {
    m.executor->clear(slot);
    ++m.sequence;
    if (m.sparse) m.sparse->reset();  // cached rows of another sequence would join the sum
  }
  const int64_t n = static_cast<int64_t>(tokens.size());
  check_tokens(tokens, m.package.config.vocab_size);
  const int64_t pos = m.kv->length(slot);
  TIERLM_CHECK(m.policy.evicts() || pos + n <= m.context, kErrorInvalidArgument,
               "the sequence needs ", pos + n, " positions (", pos, " in the cache + ", n,
               " new tokens) but the context holds ", m.context, " (max_positions ",
               m.package.config.max_positions, "); shorten the prompt");
  return run_chunks(slot, tokens, nullptr);
}

// Within a chunk the executor scores its rows; across chunks the previous chunk's last logits
// score the next chunk's first token.
const float* Model::run_chunks(int32_t slot, std::span<const int32_t> tokens, float* nll) {
  Impl& m = *impl_;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t vocab = m.package.config.vocab_size;
  const float* logits = nullptr;
  for (int64_t start = 0; start < n; start += m.chunk) {
    if (nll != nullptr && start > 0) {
      nll[start - 1] = detail::token_nll(logits, vocab, tokens[start]);
    }
    detail::ExecBatch batch;
    batch.tokens = tokens.data() + start;
    batch.n = std::min(m.chunk, n - start);
    batch.slot = slot;
    batch.nll = nll != nullptr ? nll + start : nullptr;
    logits = m.executor->run(batch);
  }
  return logits;
}

std::vector<float> Model::token_nll(std::span<const int32_t> ids) {
  Impl& m = *impl_;
  TIERLM_CHECK(ids.size() >= 2, kErrorInvalidArgument, "token_nll: ", ids.size(),
               " ids; give at least 2 (the first is only context)");
  check_tokens(ids, m.package.config.vocab_size);
  auto lock = claim(m.busy);
  m.executor->clear_all();
  ++m.sequence;
  if (m.sparse) m.sparse->reset();
  std::vector<float> nll(ids.size() - 1);
  const int64_t n = static_cast<int64_t>(ids.size());
  TIERLM_CHECK(m.policy.evicts() || n <= m.context, kErrorInvalidArgument, "token_nll: ", n,
               " ids but the context holds ", m.context, "; load with a kv_policy to go past it");
  run_chunks(0, ids, nll.data());
  return nll;
}

std::vector<float> Model::kv_scores(int32_t slot) const {
  const Impl& m = *impl_;
  TIERLM_CHECK(slot >= 0 && slot < m.max_batch, kErrorInvalidArgument, "kv_scores: slot ", slot,
               " is outside 0..", m.max_batch - 1);
  const detail::KvEviction* e = m.executor->eviction();
  if (e == nullptr) return {};
  const std::span<const float> s = e->scores(slot, m.kv->length(slot));
  return {s.begin(), s.end()};
}

void Model::share_slot(int32_t from, int32_t to, int64_t tokens) {
  Impl& m = *impl_;
  auto lock = claim(m.busy);
  for (int32_t s : {from, to})
    TIERLM_CHECK(s >= 0 && s < m.max_batch, kErrorInvalidArgument, "share_slot: slot ", s,
                 " is outside 0..", m.max_batch - 1);
  m.executor->share(from, to, tokens);
  ++m.sequence;  // as a restart of `to`
  if (m.sparse) m.sparse->reset();
}

const float* Model::forward_batch(std::span<const int32_t> tokens, std::span<const int32_t> slots) {
  Impl& m = *impl_;
  auto lock = claim(m.busy);
  const int64_t n = static_cast<int64_t>(tokens.size());
  TIERLM_CHECK(slots.size() == tokens.size(), kErrorInvalidArgument,
               "forward_batch: ", tokens.size(), " tokens for ", slots.size(),
               " slots; give one token per slot");
  TIERLM_CHECK(n <= m.max_batch, kErrorInvalidArgument, "forward_batch: ", n,
               " sequences but the model was loaded with max_batch ", m.max_batch);
  check_tokens(tokens, m.package.config.vocab_size);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t s = slots[i];
    TIERLM_CHECK(s >= 0 && s < m.max_batch, kErrorInvalidArgument, "forward_batch: slot ", s,
                 " is outside 0..", m.max_batch - 1);
    for (int64_t j = 0; j < i; ++j) {
      TIERLM_CHECK(slots[j] != s, kErrorInvalidArgument, "forward_batch: slot ", s,
                   " appears twice");
    }
    TIERLM_CHECK(m.policy.evicts() || m.kv->length(s) + 1 <= m.context, kErrorInvalidArgument,
                 "forward_batch: slot ", s, " holds ", m.kv->length(s),
                 " tokens, the context is full (", m.context, ")");
  }
  detail::ExecBatch batch;
  batch.tokens = tokens.data();
  batch.n = n;
  batch.slots = slots.data();
  return m.executor->run(batch);
}

std::vector<float> Model::logits(std::span<const int32_t> ids) {
  const auto t0 = detail::Clock::now();
  const float* out = forward(ids, true);
  const double seconds = detail::seconds_since(t0);
  record_timing(ids.size(), seconds, 0, 0.0);
  return std::vector<float>(out, out + vocab_size());
}

}  // namespace tierlm
