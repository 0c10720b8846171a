// The plan of the executor's input-channel sparse linears (ModelOptions::sparse on a package
// with a "channels" section, docs/sparse.md): per decoder layer and site (the linears sharing
// one input: q/k/v, o, gate/up, down) the graph ops it replaces, the site's channel file (row c
// is column c of every matrix of the site), its threshold, and every size the runtime
// allocates at load (channel caches, staging, scratch), computed once here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "sparse/sparse_plan.hpp"
#include "tierlm/core/dtype.hpp"
#include "tierlm/model/package.hpp"

namespace tierlm::detail {

// One linear of a site: its graph op and where its output sits in the site's row.
struct ChannelSiteOp {
  size_t op = 0;      // graph.json index
  size_t offset = 0;  // first element of its output in a row of the site's file
  size_t out = 0;     // its output width
  std::string bias;   // f32 bias tensor, empty when none
};

struct ChannelSitePlan {
  int layer = 0;
  std::string site;                // attn_in, attn_out, ffn_in, ffn_down
  std::vector<ChannelSiteOp> ops;  // in graph order; ops[0] computes the whole site
  float threshold = 0.0f;          // channels with |x| <= threshold are skipped
  // The channel file read as a row file (SparseRowLoader): n_neurons = input channels,
  // row_elems = the summed output widths, dim = row_elems; never gated.
  SparseLayerPlan rows;
  double sparsity = 0.0;  // the fraction of channels calibration meant this site to skip
  // A rotated site (tierlm/sparse/channel_rotation.py) thresholds z = Qᵀ x and its file holds
  // the columns of W Q: index into ChannelPlan::rotations, -1 when not rotated.
  int rotation = -1;

  // rows.capacity picks how the site's columns are held: 0 streams them (each token reads its
  // kept columns and sums them where they land, nothing cached), n_neurons keeps them all
  // resident (read once at load), anything between is a window / LRU channel cache.
  bool streamed() const { return rows.capacity == 0; }
  // Decode read-ahead (ChannelOptions::readahead), on an attn_in site: the index in
  // ChannelPlan::sites of its layer's ffn_in site, whose input is predicted from this site's
  // as x * readahead_scale (the ratio of the two RMSNorm weights, 0 where attn_in's is 0);
  // -1 when none.
  int readahead_site = -1;
  std::vector<float> readahead_scale;
  bool resident() const { return rows.capacity == rows.n_neurons; }
};

// What the model passes on from ModelOptions (sparse_window, sparse_capacity, verify) and its
// prefill chunk.
struct ChannelOptions {
  int64_t window = 4;      // tokens whose channels stay cached (1 = no window)
  int64_t capacity = 0;    // cached channels per site; 0 = auto (grow_channel_caches)
  bool verify = false;     // check the channel files' CRC-32 at load
  size_t max_rows = 1;     // rows of a batch (prefill chunk)
  bool readahead = false;  // decode: read gate/up's predicted columns during attention
};

// Byte offsets of the per-token views in the runtime's one scratch buffer (64-byte aligned).
struct ChannelScratchLayout {
  size_t channel_ids = 0;  // int32[max channels]: 0, 1, 2, ... (a resident site's channels)
  size_t kept = 0;         // int32[max channels] each: kept channels, window load / evict lists,
  size_t to_load = 0;      //   channels to read, cached channels to drop
  size_t to_evict = 0;
  size_t need = 0;
  size_t evict = 0;
  size_t sources = 0;   // SparseRowSource[kChannelStreamSlots x max batch]: where rows land
  size_t requests = 0;  // IoRequest[max_requests]
  size_t site_out = 0;  // float[max_rows * max_row_elems]: the running site's outputs
  size_t rotated = 0;   // float[max channels]: a rotated site's input z = Qᵀ x
  size_t rows = 0;      // SparseTokenInfo[max_rows]: per row of the batch
  size_t log = 0;       // SparseTokenInfo[kSparseTokenLog]
  // The read-ahead (ChannelReadAhead): the predicted input, its channels, per channel its row
  // (-1: none), per row its request, where each row lands, its requests.
  size_t ahead_input = 0;  // float[max channels]
  size_t ahead_ids = 0;    // int32[max channels] each
  size_t ahead_slots = 0;
  size_t ahead_row_requests = 0;
  size_t ahead_sources = 0;   // SparseRowSource[max channels]
  size_t ahead_requests = 0;  // IoRequest[max_requests(max channels)]
  size_t max_requests = 0;
  size_t max_batch = 0;  // columns one batch of reads holds at most (a cache's or a site's)
  size_t bytes = 0;
};

struct ChannelPlan {
  std::string package;
  std::vector<ChannelSitePlan> sites;
  std::vector<std::string> dense_tensors;  // matrices the weight store must not load
  size_t window = 4;
  size_t max_rows = 1;
  size_t max_row_elems = 0;
  size_t staging_bytes = 0;  // one staging buffer shared by the sites
  bool readahead = false;    // ChannelOptions::readahead
  // The read-ahead's own staging: 0 when no streamed ffn_in site is read ahead.
  size_t readahead_bytes = 0;
  // The orthogonal matrices Q (f32 [n, n], row c holds Q[c][:]) of rotated sites: their
  // offsets in rotation_file (channel_rotations.safetensors) and their dimension each. They
  // stay resident (transposed) in the host tier: rotation_bytes.
  std::string rotation_file;
  std::vector<uint64_t> rotations;
  std::vector<size_t> rotation_dims;
  ChannelScratchLayout scratch;
  uint64_t host_bytes = 0;       // everything ChannelSparse allocates from the host tier
  uint64_t dense_bytes = 0;      // the sites' matrices (what dense offload reads per token)
  double target_sparsity = 0.0;  // what the thresholds were calibrated for
  VerifyStats verify;

  // Index in sites of graph op `op`'s site and its index among the site's ops; -1 when none.
  int site_of_op(size_t op, size_t* index) const;
};

// Host bytes of the rotated sites' matrices.
uint64_t rotation_bytes(const ChannelPlan& plan);

// True when the package's manifest lists channel files (sparse loading then runs them).
bool channel_sparse_present(const Package& package);

// Matches the graph's linears to the manifest's "channels" section and its thresholds file;
// throws kErrorNotFound / kErrorUnsupported / kErrorCorrupt naming the file and the fix.
ChannelPlan channel_plan(const Package& package, const ChannelOptions& options);

// Sets each site's capacity: `capacity` channels (an LRU cache, resident when it covers all
// channels), or when 0 streams every site; then the staging buffer, the scratch layout and
// plan.host_bytes.
void size_channel_caches(ChannelPlan& plan, int64_t capacity);

// Makes streamed sites resident, narrowest columns first, while their columns fit in `spare`
// host bytes in all; returns the bytes taken.
uint64_t grow_channel_caches(ChannelPlan& plan, uint64_t spare);

}  // namespace tierlm::detail
