// What a loaded Model holds: the package, the host tier and everything allocated from it
// (weights, KV cache, arena, sparse FFN), the backend and the executor that runs on them.
// Model's methods are spread over model*.cpp by job; this is the state they share.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>

#include "kernels/backend.hpp"
#include "model/executor.hpp"
#include "model/kv_cache.hpp"
#include "moe/expert_store.hpp"
#include "sparse/sparse_runtime.hpp"
#include "tierlm/model/model.hpp"
#include "weights/weight_store.hpp"

namespace tierlm {

struct Model::Impl {
  Package package;
  ModelOptions options;
  int64_t context = 0;    // KV cache tokens per slot
  int64_t chunk = 0;      // rows per batch (prefill chunk, or a batched decode's slots)
  int64_t max_batch = 1;  // sequence slots
  KvPolicy policy;        // evicts(): sequences run past the context
  std::unique_ptr<HostTier> host;
  std::unique_ptr<detail::Backend> backend;
  std::unique_ptr<detail::WeightStore> weights;
  detail::StreamingWeightStore* stream = nullptr;  // weights, when streaming
  std::unique_ptr<detail::ExpertStore> experts;    // when the graph has moe ops
  // ModelOptions::sparse: the sparse FFN, or input-channel sparsity when the package has
  // channel files.
  std::unique_ptr<detail::SparseRuntime> sparse;
  std::unique_ptr<detail::KvCache> kv;
  HostBuffer arena;
  MemoryPlan plan;
  std::unique_ptr<detail::Executor> executor;
  WeightPlacement placement;
  uint64_t sequence = 0;
  ModelStats totals;
  double load_seconds = 0.0;
  VerifyStats sparse_verify;  // the sparse plan's bundles and predictors checked at load
  std::mutex busy;            // one forward at a time: the KV cache and arena are shared state
};

}  // namespace tierlm
