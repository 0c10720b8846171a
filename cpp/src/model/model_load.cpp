// Model::load: checks the options, chooses the batch size, lists the tensors the graph reads,
// then sizes, fits and allocates (arena plan, KV cache, host budget, weights) and resolves the
// graph into the executor. Each step's rules live in its own file; this is their order.
#include <algorithm>
#include <cstring>
#include <filesystem>

#include "core/clock.hpp"
#include "model/exec_buffers.hpp"
#include "model/host_budget.hpp"
#include "model/model_impl.hpp"
#include "model/op_resolve.hpp"
#include "model/package_plans.hpp"
#include "moe/expert_usage.hpp"
#include "moe/moe_graph.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/core/parallel.hpp"

namespace tierlm {

namespace {

constexpr int64_t kDefaultPrefillChunk = 256;

// Rows per batch: the option, else the largest stored plan that fits the context and holds a
// batched decode step, else kDefaultPrefillChunk; never fewer than max_batch, since a batched
// decode step runs one row per sequence through the same arena.
int64_t choose_chunk(const Package& package, const ModelOptions& options, int64_t context,
                     int64_t max_batch) {
  int64_t chunk = 0;
  if (options.prefill_chunk > 0) {
    chunk = std::min(options.prefill_chunk, context);
  } else {
    chunk = std::min(kDefaultPrefillChunk, context);
    for (int64_t seq : detail::package_plan_seqs(package.path)) {
      if (seq <= context && seq >= max_batch) chunk = seq;
    }
  }
  return std::max(chunk, max_batch);
}

// Weights that only ops of `kind` read: embedding tables (a streaming store may read them by
// rows on demand) and linear matrices (it may stream them in row parts).
std::vector<std::string> weights_read_only_by(const Package& package, OpKind kind) {
  std::vector<std::string> names;
  for (const GraphOp& op : package.graph.ops) {
    if (op.kind != kind) continue;
    const std::string name = detail::graph_weight_name(package, op);
    bool only = std::find(names.begin(), names.end(), name) == names.end();
    for (const GraphOp& other : package.graph.ops) {
      if (other.kind != kind &&
          (detail::graph_weight_name(package, other) == name || other.bias == name))
        only = false;
    }
    if (only) names.push_back(name);
  }
  return names;
}

}  // namespace

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

Model Model::load(const std::string& path, const ModelOptions& options) {
  check_model_options(options);
  const auto t0 = detail::Clock::now();
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.options = options;
  m.package = package_open(path);
  const Package& p = m.package;
  const ModelConfig& c = p.config;
  if (options.threads > 0 && options.threads != parallel_threads()) {
    parallel_set_threads(options.threads);
  }

  m.context =
      options.max_context > 0 ? std::min(options.max_context, c.max_positions) : c.max_positions;
  m.policy = kv_policy_parse(options.kv_policy);
  if (m.policy.evicts()) {
    // The cache holds the policy's tokens at positions counted within it.
    const bool rope = std::any_of(p.graph.ops.begin(), p.graph.ops.end(),
                                  [](const GraphOp& op) { return op.kind == OpKind::kOpRope; });
    TIERLM_CHECK(rope, kErrorUnsupported, "kv_policy '", options.kv_policy, "': ", p.architecture,
                 " has no rotary position embedding, so its cached keys cannot move to new "
                 "positions; load it without kv_policy");
    TIERLM_CHECK(options.max_context == 0, kErrorInvalidArgument, "kv_policy '", options.kv_policy,
                 "' sets the cache to ", m.policy.capacity(), " tokens; leave max_context unset");
    TIERLM_CHECK(m.policy.capacity() <= c.max_positions, kErrorInvalidArgument, "kv_policy '",
                 options.kv_policy, "' keeps ", m.policy.capacity(),
                 " tokens, more than the model's max_positions ", c.max_positions);
    m.context = m.policy.capacity();
  }
  m.max_batch = options.max_batch;
  m.chunk = choose_chunk(p, options, m.context, m.max_batch);
  auto eviction = detail::KvEviction::create(m.policy, m.max_batch, c.vocab_size);
  if (eviction) m.chunk = std::min(m.chunk, eviction->max_step());
  const std::vector<detail::KvLayerShape> kv_layers = detail::kv_layer_shapes(p);
  const detail::KvSpillPlan spill =
      detail::KvCache::spill_plan(kv_layers, m.context, m.max_batch, options.kv_dtype,
                                  options.kv_host_budget, std::max<int64_t>(m.max_batch, 2));
  // The disk tier opens only for a spill; a directory given for it is checked either way.
  TIERLM_CHECK(
      spill.on() || options.disk_dir.empty() || std::filesystem::is_directory(options.disk_dir),
      kErrorNotFound, "disk_dir ", options.disk_dir,
      " does not exist or is not a directory; create it or pass another directory");
  if (spill.on()) {
    // A prefill step writes up to chunk / block + 1 blocks, all in host memory at once.
    const int64_t most = (spill.resident_blocks - 1) * detail::kKvBlockTokens;
    TIERLM_CHECK(options.prefill_chunk <= most, kErrorBudget, "prefill_chunk ",
                 options.prefill_chunk, " writes up to ",
                 (options.prefill_chunk + detail::kKvBlockTokens - 1) / detail::kKvBlockTokens + 1,
                 " KV blocks a step, but kv_host_budget ", format_bytes(options.kv_host_budget),
                 " keeps ", spill.resident_blocks,
                 " in host memory; lower prefill_chunk to at most ", most,
                 " or raise kv_host_budget");
    m.chunk = std::max(std::min(m.chunk, most), m.max_batch);
  }
  m.backend = detail::backend_cpu();

  detail::HostDemand demand;
  demand.chunk = m.chunk;
  demand.context = m.context;
  demand.max_batch = m.max_batch;
  for (const GraphOp& op : p.graph.ops) {
    if (!op.weight.empty()) demand.tensors.push_back(detail::graph_weight_name(p, op));
    if (!op.bias.empty()) demand.tensors.push_back(op.bias);
  }
  // Experts: the expert store holds them (homed or cached) under what the rest leaves.
  if (!detail::moe_ops(p).empty()) {
    demand.expert_bytes = detail::expert_resident_bytes(p);
    demand.expert_min_bytes = detail::expert_store_minimum(p, options.expert_prefetch);
  }
  // Sparse: with channel files, every sparse site's matrices are read per input channel;
  // else the FFN matrices per neuron from the bundles. Either way not by the store.
  detail::SparseFfnPlan sparse_plan;
  detail::ChannelPlan channel_plan;
  const bool channels = options.sparse && detail::channel_sparse_present(p);
  if (channels) {
    TIERLM_CHECK(options.sparse_bundled, kErrorInvalidArgument, p.path,
                 ": sparse_bundled=false (--no-bundling) applies to FFN neuron bundles; this "
                 "package runs input-channel sparse, whose columns are read whole");
    channel_plan = detail::channel_plan(p, {.window = options.sparse_window,
                                            .capacity = options.sparse_capacity,
                                            .verify = options.verify,
                                            .max_rows = static_cast<size_t>(m.chunk),
                                            .readahead = options.sparse_readahead});
    std::erase_if(demand.tensors, [&](const std::string& name) {
      return std::find(channel_plan.dense_tensors.begin(), channel_plan.dense_tensors.end(),
                       name) != channel_plan.dense_tensors.end();
    });
  } else if (options.sparse) {
    sparse_plan = detail::sparse_ffn_plan(p, {.window = options.sparse_window,
                                              .capacity = options.sparse_capacity,
                                              .bundled = options.sparse_bundled,
                                              .verify = options.verify,
                                              .readahead = options.sparse_readahead,
                                              .max_rows = static_cast<size_t>(m.chunk)});
    std::erase_if(demand.tensors, [&](const std::string& name) {
      return std::find(sparse_plan.dense_tensors.begin(), sparse_plan.dense_tensors.end(), name) !=
             sparse_plan.dense_tensors.end();
    });
  }
  demand.row_tensors = weights_read_only_by(p, OpKind::kOpEmbedding);
  demand.split_tensors = weights_read_only_by(p, OpKind::kOpLinear);

  // Memory: buffers and plan for a chunk, KV cache for the context, then the budget.
  const detail::BufferAssignment assignment =
      detail::buffers_assign(p, *m.backend, m.chunk, m.context, m.max_batch);
  m.plan = detail::buffers_plan(p, assignment, m.chunk);
  demand.kv_bytes = spill.on() ? spill.host_bytes
                               : detail::KvCache::bytes_reserved(kv_layers, m.context, m.max_batch,
                                                                 options.kv_dtype);
  demand.kv_dtype = options.kv_dtype;
  demand.arena_bytes = m.plan.peak;
  const detail::HostBudget budget = detail::host_budget_fit(
      p, options, demand, options.sparse && !channels ? &sparse_plan : nullptr,
      channels ? &channel_plan : nullptr);

  detail::WeightStoreOptions store_options;
  store_options.verify = options.verify;
  m.host = std::make_unique<HostTier>(options.host_budget, options.lock);
  if (budget.streaming) {
    auto store =
        detail::weight_store_streaming(p, *m.host, demand.tensors, budget.placement, store_options);
    m.stream = store.get();
    m.weights = std::move(store);
  } else {
    m.weights = detail::weight_store_resident(p, *m.host, demand.tensors, store_options);
  }
  m.placement = detail::host_budget_placement(p, demand, budget);
  m.kv = std::make_unique<detail::KvCache>(
      *m.host, kv_layers, m.context, m.max_batch, options.kv_dtype, demand.kv_bytes, spill,
      detail::KvDiskOptions{.dir = options.disk_dir, .budget = options.disk_budget});
  m.arena = m.host->allocate(budget.arena_bytes);
  std::memset(m.arena.data(), 0, m.arena.size());
  detail::SparseFfn* sparse_ffn = nullptr;
  detail::ChannelSparse* channel_sparse = nullptr;
  if (channels) {
    auto runtime = std::make_unique<detail::ChannelSparse>(channel_plan, *m.host);
    channel_sparse = runtime.get();
    m.sparse = std::move(runtime);
  } else if (options.sparse) {
    auto runtime = std::make_unique<detail::SparseFfn>(sparse_plan, *m.host);
    sparse_ffn = runtime.get();
    m.sparse = std::move(runtime);
  }
  if (demand.expert_bytes > 0) {
    m.experts = std::make_unique<detail::ExpertStore>(
        p, *m.host,
        detail::ExpertStoreOptions{.budget = budget.expert_budget,
                                   .policy = detail::expert_policy_parse(options.expert_cache),
                                   .prefetch = options.expert_prefetch,
                                   .verify = options.verify,
                                   .usage = detail::expert_usage_read(p)});
  }
  m.sparse_verify = channels ? channel_plan.verify : sparse_plan.verify;

  detail::ResolvedOps ops = detail::ops_resolve(
      p, assignment, m.plan, static_cast<char*>(m.arena.data()), *m.weights, *m.backend,
      sparse_ffn ? &sparse_plan : nullptr, channels ? &channel_plan : nullptr, m.context);
  m.executor = std::make_unique<detail::Executor>(
      std::move(ops), *m.backend, *m.weights, *m.kv, sparse_ffn, channel_sparse, m.experts.get(),
      c.rope_inv_freq.data(), m.chunk, m.max_batch, std::move(eviction));
  m.load_seconds = detail::seconds_since(t0);
  return Model(std::move(impl));
}

}  // namespace tierlm
