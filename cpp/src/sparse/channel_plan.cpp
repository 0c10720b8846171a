// Builds the input-channel sparse plan from a package: the manifest's "channels" section (one
// channel file per layer and site), the thresholds file it names, and the graph's linears of
// each site; then sizes the caches, staging and scratch the runtime allocates.
#include "sparse/channel_plan.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <optional>

#include "core/clock.hpp"
#include "core/json.hpp"
#include "io/safetensors.hpp"
#include "sparse/channel_stream.hpp"
#include "sparse/row_cache.hpp"
#include "sparse/sparse_row_gather.hpp"
#include "tierlm/core/align.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/io/io.hpp"
#include "tierlm/kernels/kernels.hpp"
#include "tierlm/sparse/neuron_cache.hpp"
#include "tierlm/sparse/sparse_stats.hpp"

namespace tierlm::detail {

namespace {

constexpr size_t kMaxStaging = 64ull << 20;
const char* const kHint = "; calibrate again with `tierlm sparse calibrate MODEL --out PKG`";

// The linears of each site, by tensor name within a layer (tierlm/sparse/channel.py SITES).
struct SiteNames {
  const char* site;
  std::vector<const char*> weights;
};
const std::vector<SiteNames>& site_names() {
  static const std::vector<SiteNames> names = {
      {"attn_in", {"attn.q", "attn.k", "attn.v"}},
      {"attn_out", {"attn.o"}},
      {"ffn_in", {"ffn.gate", "ffn.up"}},
      {"ffn_down", {"ffn.down"}},
  };
  return names;
}

const Json& manifest_channels(const Json& manifest, const Package& p) {
  const Json* channels = manifest.find("channels");
  TIERLM_CHECK(channels != nullptr && !channels->is_null(), kErrorNotFound, p.path,
               ": the package has no input-channel files (manifest \"channels\")", kHint);
  return *channels;
}

// The graph's linear ops of one site of a layer, checked against the channel file's layout.
void match_site(const Package& p, const Json& entry, const std::string& where,
                const std::vector<const char*>& weights, ChannelSitePlan& s) {
  const Graph& g = p.graph;
  const auto& outs = entry.at("outs", where).as_array(where + ".outs");
  TIERLM_CHECK(outs.size() == weights.size(), kErrorCorrupt, where, ": ", outs.size(),
               " output widths for the ", weights.size(), " matrices of site ", s.site, kHint);
  const std::string prefix = "layers." + std::to_string(s.layer) + ".";
  size_t offset = 0;
  for (size_t k = 0; k < weights.size(); ++k) {
    const std::string name = prefix + weights[k] + ".weight";
    size_t op = g.ops.size();
    for (size_t i = 0; i < g.ops.size(); ++i) {
      if (g.ops[i].kind == OpKind::kOpLinear && g.ops[i].weight == name) op = i;
    }
    TIERLM_CHECK(op < g.ops.size(), kErrorUnsupported, p.path, ": graph.json has no linear of `",
                 name, "`; input-channel sparsity runs Llama-family graphs only");
    const TensorInfo& t = p.tensor(name);
    const size_t out = static_cast<size_t>(outs[k].as_int(where));
    TIERLM_CHECK(t.shape.size() == 2 && static_cast<size_t>(t.shape[0]) == out &&
                     static_cast<size_t>(t.shape[1]) == s.rows.n_neurons,
                 kErrorCorrupt, where, ": column ", k, " of ", out, " x ", s.rows.n_neurons,
                 " does not match `", name, "`", kHint);
    TIERLM_CHECK(s.ops.empty() || g.ops[op].inputs == g.ops[s.ops.front().op].inputs,
                 kErrorUnsupported, p.path, ": the linears of site ", s.site, " of layer ", s.layer,
                 " do not share one input in graph.json");
    const std::string& bias = g.ops[op].bias;
    const TensorInfo* b = bias.empty() ? nullptr : p.find_tensor(bias);
    TIERLM_CHECK(bias.empty() || (b && b->dtype == DType::kDTypeF32), kErrorUnsupported, p.path,
                 ": bias `", bias, "` is not f32; input-channel sparsity needs f32 biases");
    s.ops.push_back({op, offset, out, bias});
    offset += out;
  }
  std::sort(s.ops.begin(), s.ops.end(),
            [](const ChannelSiteOp& a, const ChannelSiteOp& b) { return a.op < b.op; });
  s.rows.row_elems = offset;
  s.rows.dim = offset;
}

// The thresholds file: [{site: threshold}] per layer, the per-site sparsity it targeted and
// the sites it rotates (their matrices' file in plan.rotation_file).
void read_thresholds(const Package& p, const Json& channels, const std::string& where,
                     ChannelPlan& plan,
                     std::vector<std::vector<std::pair<std::string, double>>>& thresholds,
                     std::vector<std::vector<std::pair<std::string, double>>>& sparsity,
                     std::vector<std::string>& rotated) {
  const std::string path = p.file_path(channels.at("json", where).as_string(where + ".json"));
  struct stat st {};
  TIERLM_CHECK(::stat(path.c_str(), &st) == 0, kErrorNotFound, path, ": cannot open (",
               errno_text(errno), ")", kHint);
  const Json meta = json_parse_file(path);
  const auto& layers = meta.at("thresholds", path).as_array(path + ".thresholds");
  TIERLM_CHECK(static_cast<int64_t>(layers.size()) == p.config.num_layers, kErrorCorrupt, path,
               ": thresholds for ", layers.size(), " layers, the model has ", p.config.num_layers,
               kHint);
  const Json* criterion = meta.find("criterion");
  const std::string cut =
      criterion && criterion->is_string() ? criterion->as_string(path) : "magnitude";
  TIERLM_CHECK(cut == "magnitude", kErrorUnsupported, path, ": criterion \"", cut,
               "\" (per-channel scales) is not run by the executor yet; calibrate with "
               "`tierlm sparse calibrate MODEL --criterion magnitude --out PKG`");
  const Json* rotation = meta.find("rotation");
  if (rotation != nullptr && !rotation->is_null()) {
    const std::string rw = path + ".rotation";
    const std::string scope = rotation->at("scope", rw).as_string(rw + ".scope");
    TIERLM_CHECK(scope == "site", kErrorUnsupported, rw, ": scope \"", scope,
                 "\" is not run by the executor (only \"site\")", kHint);
    plan.rotation_file = p.file_path(rotation->at("file", rw).as_string(rw + ".file"));
    for (const Json& site : rotation->at("sites", rw).as_array(rw + ".sites")) {
      rotated.push_back(site.as_string(rw + ".sites"));
    }
  }
  const Json* target = meta.find("target_sparsity");
  if (target && target->is_number()) plan.target_sparsity = target->as_number(path);
  const Json* metrics = meta.find("metrics");
  const Json* site_sparsity = metrics ? metrics->find("site_sparsity") : nullptr;
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string w = path + ".thresholds[" + std::to_string(i) + "]";
    thresholds.emplace_back();
    sparsity.emplace_back();
    for (const auto& [site, t] : layers[i].as_object(w)) {
      const bool known = std::any_of(site_names().begin(), site_names().end(),
                                     [&](const SiteNames& n) { return site == n.site; });
      TIERLM_CHECK(known, kErrorCorrupt, w, ": unknown site \"", site, "\"", kHint);
      const double v = t.as_number(w + "." + site);
      TIERLM_CHECK(std::isfinite(v) && v >= 0.0, kErrorCorrupt, w, ".", site, ": threshold ", v,
                   " is not a finite number >= 0", kHint);
      thresholds.back().emplace_back(site, v);
      double fraction = plan.target_sparsity;
      if (site_sparsity && site_sparsity->is_array() && i < site_sparsity->as_array(path).size()) {
        const Json* f = site_sparsity->as_array(path)[i].find(site);
        if (f && f->is_number()) fraction = f->as_number(path);
      }
      sparsity.back().emplace_back(site, fraction);
    }
  }
}

double lookup(const std::vector<std::pair<std::string, double>>& values, const std::string& key) {
  for (const auto& [k, v] : values) {
    if (k == key) return v;
  }
  return 0.0;
}

// The channel file of one site: its layout fields, checked against the file on disk.
// Checks a whole file against the CRC-32 the manifest entry holds under `key` and counts it in
// the plan's verify stats; `what` names the file in the damage message.
void verify_file_crc(const Json& entry, const char* key, const std::string& file, uint64_t bytes,
                     const std::string& where, const char* what, ChannelPlan& plan) {
  const Json* crc = entry.find(key);
  TIERLM_CHECK(crc != nullptr && crc->is_number(), kErrorCorrupt, where, ": no ", key, " for ",
               file, ", so verification cannot cover it", kHint);
  const uint32_t sum = file_crc32(file, bytes);
  TIERLM_CHECK(sum == static_cast<uint32_t>(crc->as_int(where)), kErrorCorrupt, file,
               ": checksum mismatch (CRC-32 ", sum, ", manifest says ", crc->as_int(where),
               "); the ", what, " is damaged", kHint);
  plan.verify.bundles += 1;
  plan.verify.bytes += bytes;
}

void read_site_file(const Package& p, const Json& entry, const std::string& where, bool verify,
                    ChannelPlan& plan, ChannelSitePlan& s) {
  SparseLayerPlan& r = s.rows;
  r.layer = s.layer;
  r.file = p.file_path(entry.at("file", where).as_string(where + ".file"));
  r.n_neurons = static_cast<size_t>(entry.at("n_neurons", where).as_int(where + ".n_neurons"));
  r.dtype = dtype_parse(entry.at("dtype", where).as_string(where + ".dtype"));
  const size_t block = dtype_block(r.dtype).elems;
  for (const ChannelSiteOp& op : s.ops) {
    TIERLM_CHECK(op.out % block == 0, kErrorCorrupt, where, ": columns of ", dtype_name(r.dtype),
                 " hold each matrix's part as whole ", block, "-element blocks, but the width ",
                 op.out, " is not", kHint);
  }
  r.row_bytes = dtype_row_bytes(r.dtype, r.row_elems);
  const uint64_t data = static_cast<uint64_t>(r.n_neurons) * r.row_bytes;
  const uint64_t padded = round_up(data, kAlignment);
  struct stat st {};
  TIERLM_CHECK(::stat(r.file.c_str(), &st) == 0, kErrorNotFound, r.file, ": cannot open (",
               errno_text(errno), ")", kHint);
  TIERLM_CHECK(static_cast<uint64_t>(st.st_size) >= padded, kErrorCorrupt, r.file, " is ",
               st.st_size, " bytes but site ", s.site, " of layer ", s.layer, " needs ", padded,
               " (", r.n_neurons, " columns of ", r.row_bytes, " bytes; file is truncated?)",
               kHint);
  r.file_bytes = padded;
  if (verify) verify_file_crc(entry, "crc32", r.file, data, where, "channel file", plan);
}

// The rotation file (resident Q of the rotated sites), checked whole against the manifest's
// "rotation_crc32" when verifying.
void verify_rotation_file(const Json& channels, const std::string& where, ChannelPlan& plan) {
  struct stat st {};
  TIERLM_CHECK(::stat(plan.rotation_file.c_str(), &st) == 0, kErrorNotFound, plan.rotation_file,
               ": cannot open (", errno_text(errno), ")", kHint);
  verify_file_crc(channels, "rotation_crc32", plan.rotation_file, static_cast<uint64_t>(st.st_size),
                  where, "rotation file", plan);
}

// The f32 weight of the RMSNorm op whose output is the input of `s`'s linears; empty when
// that input does not come straight from an RMSNorm.
std::vector<float> input_norm(const Package& p, const ChannelSitePlan& s) {
  const std::string& input = p.graph.ops[s.ops.front().op].inputs.front();
  for (const GraphOp& op : p.graph.ops) {
    if (op.kind != OpKind::kOpRmsNorm || op.output != input || op.weight.empty()) continue;
    const TensorInfo& t = p.tensor(op.weight);
    std::vector<char> bytes(t.nbytes);
    File(p.file_path(t.file), IoMode::kIoModeRead, IoOptions{.direct = false})
        .read(bytes.data(), bytes.size(), t.offset);
    std::vector<float> w(static_cast<size_t>(t.numel()));
    const int32_t row = 0;
    kernel_embedding(bytes.data(), t.dtype, &row, 1, w.size(), w.data());
    return w;
  }
  return {};
}

// Pairs each layer's ffn_in site with its attn_in site for the decode read-ahead: both inputs
// are RMSNorms of the residual stream, which attention changes little, so ffn_in's input is
// predicted as attn_in's times the ratio of their weights (the same per-row scale cancels).
void pair_readahead_sites(const Package& p, ChannelPlan& plan) {
  for (ChannelSitePlan& a : plan.sites) {
    if (a.site != "attn_in") continue;
    for (size_t f = 0; f < plan.sites.size(); ++f) {
      const ChannelSitePlan& b = plan.sites[f];
      if (b.site != "ffn_in" || b.layer != a.layer || b.rows.n_neurons != a.rows.n_neurons) {
        continue;
      }
      const std::vector<float> wa = input_norm(p, a), wb = input_norm(p, b);
      if (wa.size() != a.rows.n_neurons || wb.size() != b.rows.n_neurons) continue;
      a.readahead_site = static_cast<int>(f);
      a.readahead_scale.resize(wa.size());
      for (size_t c = 0; c < wa.size(); ++c) {
        a.readahead_scale[c] = wa[c] != 0.0f ? wb[c] / wa[c] : 0.0f;
      }
    }
  }
}

}  // namespace

int ChannelPlan::site_of_op(size_t op, size_t* index) const {
  for (size_t s = 0; s < sites.size(); ++s) {
    for (size_t k = 0; k < sites[s].ops.size(); ++k) {
      if (sites[s].ops[k].op == op) {
        *index = k;
        return static_cast<int>(s);
      }
    }
  }
  return -1;
}

bool channel_sparse_present(const Package& package) {
  const Json manifest = json_parse_file(package.path + "/manifest.json");
  const Json* channels = manifest.find("channels");
  return channels != nullptr && !channels->is_null();
}

ChannelPlan channel_plan(const Package& p, const ChannelOptions& options) {
  ChannelPlan plan;
  plan.package = p.path;
  plan.window = sparse_window_checked(options.window, options.capacity);
  plan.max_rows = std::max<size_t>(options.max_rows, 1);
  const std::string manifest_path = p.path + "/manifest.json";
  const Json manifest = json_parse_file(manifest_path);
  const Json& channels = manifest_channels(manifest, p);
  const std::string where = manifest_path + ": channels";
  std::vector<std::vector<std::pair<std::string, double>>> thresholds, sparsity;
  std::vector<std::string> rotated;
  read_thresholds(p, channels, where, plan, thresholds, sparsity, rotated);
  std::optional<SafetensorsHeader> rotations;
  const auto start = Clock::now();
  if (!plan.rotation_file.empty()) {
    if (options.verify) verify_rotation_file(channels, where, plan);
    rotations.emplace(plan.rotation_file);
  }
  const auto& entries = channels.at("sites", where).as_array(where + ".sites");
  for (size_t e = 0; e < entries.size(); ++e) {
    const Json& entry = entries[e];
    const std::string w = where + ".sites[" + std::to_string(e) + "]";
    ChannelSitePlan s;
    s.layer = static_cast<int>(entry.at("layer", w).as_int(w + ".layer"));
    s.site = entry.at("site", w).as_string(w + ".site");
    TIERLM_CHECK(s.layer >= 0 && s.layer < p.config.num_layers, kErrorCorrupt, w, ": layer ",
                 s.layer, " is outside the model's ", p.config.num_layers, " layers", kHint);
    const auto names = std::find_if(site_names().begin(), site_names().end(),
                                    [&](const SiteNames& n) { return s.site == n.site; });
    TIERLM_CHECK(names != site_names().end(), kErrorCorrupt, w, ": unknown site \"", s.site, "\"",
                 kHint);
    const double t = lookup(thresholds[static_cast<size_t>(s.layer)], s.site);
    if (t <= 0.0) continue;  // kept dense: the weight store runs it, bit for bit
    s.threshold = static_cast<float>(t);
    s.sparsity = lookup(sparsity[static_cast<size_t>(s.layer)], s.site);
    s.rows.n_neurons = static_cast<size_t>(entry.at("n_neurons", w).as_int(w + ".n_neurons"));
    match_site(p, entry, w, names->weights, s);
    read_site_file(p, entry, w, options.verify, plan, s);
    if (std::find(rotated.begin(), rotated.end(), s.site) != rotated.end()) {
      const auto n = static_cast<int64_t>(s.rows.n_neurons);
      const std::string name = "layers." + std::to_string(s.layer) + "." + s.site + ".rotation";
      s.rotation = static_cast<int>(plan.rotations.size());
      plan.rotations.push_back(rotations->f32_offset(name, {n, n}, kHint + 2));
      plan.rotation_dims.push_back(s.rows.n_neurons);
    }
    for (const ChannelSiteOp& op : s.ops) {
      const std::string& name = p.graph.ops[op.op].weight;
      plan.dense_tensors.push_back(name);
      plan.dense_bytes += p.tensor(name).nbytes;
    }
    plan.sites.push_back(std::move(s));
  }
  // Every site with a threshold needs its file.
  for (size_t layer = 0; layer < thresholds.size(); ++layer) {
    for (const auto& [site, t] : thresholds[layer]) {
      const bool listed =
          t <= 0.0 ||
          std::any_of(plan.sites.begin(), plan.sites.end(), [&](const ChannelSitePlan& s) {
            return s.layer == static_cast<int>(layer) && s.site == site;
          });
      TIERLM_CHECK(listed, kErrorCorrupt, where, ": site ", site, " of layer ", layer,
                   " has threshold ", t, " but no channel file", kHint);
    }
  }
  // A site runs whole at its first op; its outputs wait in scratch until its last op copies
  // them, so no other site may run in between.
  std::sort(plan.sites.begin(), plan.sites.end(),
            [](const auto& a, const auto& b) { return a.ops.front().op < b.ops.front().op; });
  for (size_t i = 1; i < plan.sites.size(); ++i) {
    TIERLM_CHECK(plan.sites[i].ops.front().op > plan.sites[i - 1].ops.back().op, kErrorUnsupported,
                 p.path, ": the linears of sites ", plan.sites[i - 1].site, " and ",
                 plan.sites[i].site, " interleave in graph.json");
  }
  plan.verify.seconds = options.verify ? seconds_since(start) : 0.0;
  plan.readahead = options.readahead;
  if (options.readahead) pair_readahead_sites(p, plan);
  size_channel_caches(plan, options.capacity);
  return plan;
}

namespace {

ChannelScratchLayout channel_scratch_layout(const ChannelPlan& plan) {
  size_t max_n = 0, max_batch = 0;  // a batch reads at most a cache's or a site's columns
  for (const ChannelSitePlan& s : plan.sites) {
    max_n = std::max(max_n, s.rows.n_neurons);
    max_batch = std::max(max_batch, s.streamed() ? s.rows.n_neurons : s.rows.capacity);
  }
  ChannelScratchLayout l;
  l.max_requests = SparseRowGather::max_requests(max_batch);
  l.max_batch = max_batch;
  ScratchCursor cursor;
  l.channel_ids = cursor.take(max_n * sizeof(int32_t));
  l.kept = cursor.take(max_n * sizeof(int32_t));
  l.to_load = cursor.take(max_n * sizeof(int32_t));
  l.to_evict = cursor.take(max_n * sizeof(int32_t));
  l.need = cursor.take(max_n * sizeof(int32_t));
  l.evict = cursor.take(max_n * sizeof(int32_t));
  l.sources = cursor.take(kChannelStreamSlots * max_batch * sizeof(SparseRowSource));
  l.requests = cursor.take(l.max_requests * sizeof(IoRequest));
  l.site_out = cursor.take(plan.max_rows * plan.max_row_elems * sizeof(float));
  l.rotated = cursor.take(max_n * sizeof(float));
  l.rows = cursor.take(plan.max_rows * sizeof(SparseTokenInfo));
  l.log = cursor.take(kSparseTokenLog * sizeof(SparseTokenInfo));
  if (plan.readahead_bytes > 0) {
    l.ahead_input = cursor.take(max_n * sizeof(float));
    l.ahead_ids = cursor.take(max_n * sizeof(int32_t));
    l.ahead_slots = cursor.take(max_n * sizeof(int32_t));
    l.ahead_row_requests = cursor.take(max_n * sizeof(int32_t));
    l.ahead_sources = cursor.take(max_n * sizeof(SparseRowSource));
    l.ahead_requests = cursor.take(SparseRowGather::max_requests(max_n) * sizeof(IoRequest));
  }
  l.bytes = cursor.bytes;
  return l;
}

}  // namespace

uint64_t rotation_bytes(const ChannelPlan& plan) {
  uint64_t bytes = 0;
  for (size_t n : plan.rotation_dims) bytes += static_cast<uint64_t>(n) * n * sizeof(float);
  return bytes;
}

namespace {

// Host bytes of one site: none when streamed, its columns when resident, else its cache.
uint64_t site_bytes(const ChannelSitePlan& s, size_t window) {
  if (s.streamed()) return 0;
  if (s.resident()) return s.rows.file_bytes;
  return RowCache::host_bytes(s.rows, window);
}

void total_bytes(ChannelPlan& plan) {
  uint64_t worst_row = 0, batch_bytes = 0;
  plan.max_row_elems = 0;
  for (const ChannelSitePlan& s : plan.sites) {
    const SparseLayerPlan& r = s.rows;
    worst_row = std::max<uint64_t>(worst_row, round_up(r.row_bytes + kAlignment - 1, kAlignment));
    plan.max_row_elems = std::max(plan.max_row_elems, r.row_elems);
  }
  for (const ChannelSitePlan& s : plan.sites) {
    const SparseLayerPlan& r = s.rows;
    // A streamed site reads into kChannelStreamSlots slots of at most kChannelStreamBatch
    // (ChannelStream); a cached one its missing columns in one batch when they fit.
    const uint64_t batch =
        s.streamed()   ? std::min<uint64_t>(r.file_bytes, kChannelStreamSlots * kChannelStreamBatch)
        : s.resident() ? 0
                       : r.capacity * worst_row;
    batch_bytes = std::max(batch_bytes, batch);
  }
  const uint64_t staging = std::min(batch_bytes, uint64_t{kMaxStaging});
  plan.staging_bytes =
      static_cast<size_t>(std::max<uint64_t>(staging, kChannelStreamSlots * worst_row));
  plan.readahead_bytes = 0;
  for (const ChannelSitePlan& s : plan.sites) {
    if (s.readahead_site < 0) continue;
    const SparseLayerPlan& r = plan.sites[static_cast<size_t>(s.readahead_site)].rows;
    if (r.capacity != 0) continue;  // only a streamed site reads per token
    const uint64_t ahead = std::min<uint64_t>(r.file_bytes, kChannelReadAhead);
    plan.readahead_bytes = std::max(plan.readahead_bytes, static_cast<size_t>(ahead));
  }
  plan.scratch = channel_scratch_layout(plan);
  uint64_t bytes = host_pages(plan.staging_bytes) + host_pages(plan.readahead_bytes) +
                   host_pages(plan.scratch.bytes) + host_pages(rotation_bytes(plan));
  for (const ChannelSitePlan& s : plan.sites) bytes += site_bytes(s, plan.window);
  plan.host_bytes = bytes;
}

}  // namespace

void size_channel_caches(ChannelPlan& plan, int64_t capacity) {
  for (ChannelSitePlan& s : plan.sites) {
    const size_t n = s.rows.n_neurons;
    s.rows.capacity = capacity > 0 ? std::min<size_t>(static_cast<size_t>(capacity), n) : 0;
  }
  total_bytes(plan);
}

uint64_t grow_channel_caches(ChannelPlan& plan, uint64_t spare) {
  const uint64_t before = plan.host_bytes;
  // Whole sites become resident, narrowest columns first: a streamed site reads its kept
  // columns with the gaps under kSparseMergeGap, so narrow columns (4 KiB: o, down) save
  // almost no bytes by sparsity and cost small requests, while wide ones (gate/up) read
  // about the kept fraction in long requests. Ties: earlier layers first.
  std::vector<size_t> order;
  for (size_t i = 0; i < plan.sites.size(); ++i) {
    if (plan.sites[i].streamed()) order.push_back(i);
  }
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return plan.sites[a].rows.row_bytes < plan.sites[b].rows.row_bytes;
  });
  for (size_t i : order) {
    SparseLayerPlan& r = plan.sites[i].rows;
    r.capacity = r.n_neurons;
    total_bytes(plan);
    if (plan.host_bytes > before + spare) {
      r.capacity = 0;  // a narrower or later site may still fit
      total_bytes(plan);
    }
  }
  return plan.host_bytes > before ? plan.host_bytes - before : 0;
}

}  // namespace tierlm::detail
