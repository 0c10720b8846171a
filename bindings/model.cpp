// tierlm._core.Model / Generator: the native executor for Python. Conversion only; every
// call that computes releases the GIL.
#include "tierlm/model/model.hpp"

#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstring>

#include "bindings.hpp"
#include "tierlm/model/generate.hpp"

namespace nb = nanobind;

namespace tierlm::bindings {

namespace {

nb::dict config_dict(const ModelConfig& c) {
  nb::dict d;
  d["vocab_size"] = c.vocab_size;
  d["hidden_size"] = c.hidden_size;
  d["num_layers"] = c.num_layers;
  d["num_heads"] = c.num_heads;
  d["num_kv_heads"] = c.num_kv_heads;
  d["head_dim"] = c.head_dim;
  d["intermediate_size"] = c.intermediate_size;
  d["max_positions"] = c.max_positions;
  d["norm_eps"] = c.norm_eps;
  d["rope_theta"] = c.rope_theta;
  d["tie_embeddings"] = c.tie_embeddings;
  d["bos_token_id"] = c.bos_token_id;
  d["eos_token_ids"] = c.eos_token_ids;
  d["position_offset"] = c.position_offset;
  return d;
}

nb::dict generate_stats_dict(const GenerateStats& s) {
  nb::dict d;
  d["prompt_tokens"] = s.prompt_tokens;
  d["new_tokens"] = s.new_tokens;
  d["decode_steps"] = s.decode_steps;
  d["prefill_seconds"] = s.prefill_seconds;
  d["decode_seconds"] = s.decode_seconds;
  d["prefill_tokens_per_s"] = s.prefill_tokens_per_s;
  d["decode_tokens_per_s"] = s.decode_tokens_per_s;
  return d;
}

nb::dict model_stats_dict(const ModelStats& s) {
  nb::dict d;
  d["prefill_tokens"] = s.prefill_tokens;
  d["decode_tokens"] = s.decode_tokens;
  d["prefill_seconds"] = s.prefill_seconds;
  d["decode_seconds"] = s.decode_seconds;
  d["load_seconds"] = s.load_seconds;
  d["disk_bytes_read"] = s.disk_bytes_read;
  d["weight_bytes"] = s.weight_bytes;
  d["kv_bytes"] = s.kv_bytes;
  d["arena_bytes"] = s.arena_bytes;
  d["host"] = tier_stats_dict(s.host);
  d["stream_bytes_read"] = s.stream_bytes_read;
  d["io_wait_seconds"] = s.io_wait_seconds;
  d["read_busy_seconds"] = s.read_busy_seconds;
  d["layer_waits"] = s.layer_waits;
  d["chunk_waits"] = s.chunk_waits;
  d["row_bytes_read"] = s.row_bytes_read;
  d["ring_restarts"] = s.ring_restarts;
  d["io_direct"] = s.io_direct;
  d["io_registered"] = s.io_registered;
  d["io_backend"] = s.io_backend;
  d["sparse"] = s.sparse;
  if (s.sparse) {
    d["sparse_tokens"] = s.sparse_tokens;
    d["sparse_neurons_predicted"] = s.sparse_neurons_predicted;
    d["sparse_neurons_read"] = s.sparse_neurons_read;
    d["sparse_bytes_read"] = s.sparse_bytes_read;
    d["sparse_requests"] = s.sparse_requests;
    d["sparse_overflows"] = s.sparse_overflows;
    d["sparse_predictor_seconds"] = s.sparse_predictor_seconds;
    d["sparse_io_seconds"] = s.sparse_io_seconds;
    d["sparse_memory_seconds"] = s.sparse_memory_seconds;
    d["sparse_compute_seconds"] = s.sparse_compute_seconds;
    d["sparse_host_bytes"] = s.sparse_host_bytes;
    d["sparse_dense_ffn_bytes"] = s.sparse_dense_ffn_bytes;
    d["sparse_window"] = s.sparse_window;
    d["sparse_bundled"] = s.sparse_bundled;
    d["sparse_capacity"] = s.sparse_capacity;
    d["sparse_target_sparsity"] = s.sparse_target_sparsity;
    d["sparse_lossy"] = s.sparse_target_sparsity > 0;
  }
  return d;
}

nb::dict placement_dict(const WeightPlacementInfo& p) {
  nb::dict d;
  d["streaming"] = p.streaming;
  d["resident_bytes"] = p.resident_bytes;
  d["base_bytes"] = p.base_bytes;
  d["section_bytes"] = p.section_bytes;
  d["ring_bytes"] = p.ring_bytes;
  d["streamed_bytes"] = p.streamed_bytes;
  d["minimum_budget"] = p.minimum_budget;
  d["sections"] = p.sections;
  d["chunks"] = p.chunks;
  d["resident_layers"] = p.resident_layers;
  d["streamed_layers"] = p.streamed_layers;
  d["streamed_tensors"] = p.streamed_tensors;
  d["pinned_tensors"] = p.pinned_tensors;
  d["row_tensors"] = p.row_tensors;
  return d;
}

nb::dict buffers_dict(const std::vector<MemoryBuffer>& buffers) {
  nb::list names, sizes, starts, ends, offsets;
  for (const MemoryBuffer& b : buffers) {
    names.append(b.name);
    sizes.append(b.size);
    starts.append(b.start);
    ends.append(b.end);
    offsets.append(b.offset);
  }
  nb::dict d;
  d["names"] = names;
  d["sizes"] = sizes;
  d["starts"] = starts;
  d["ends"] = ends;
  d["offsets"] = offsets;
  return d;
}

GenerateOptions generate_options(int64_t max_new_tokens, float temperature, int64_t top_k,
                                 float top_p, uint64_t seed, bool stop_at_eos) {
  GenerateOptions o;
  o.max_new_tokens = max_new_tokens;
  o.temperature = temperature;
  o.top_k = top_k;
  o.top_p = top_p;
  o.seed = seed;
  o.stop_at_eos = stop_at_eos;
  return o;
}

}  // namespace

void bind_model(nb::module_& m) {
  nb::class_<Model>(m, "Model")
      .def_static(
          "load",
          [](const std::string& path, uint64_t host_budget, size_t threads, bool verify,
             int64_t max_context, int64_t prefill_chunk, bool lock, int64_t max_batch,
             int64_t ring_sections, bool sparse, int64_t sparse_window, bool sparse_bundled,
             int64_t sparse_capacity) {
            ModelOptions o;
            o.sparse = sparse;
            o.sparse_window = sparse_window;
            o.sparse_bundled = sparse_bundled;
            o.sparse_capacity = sparse_capacity;
            o.host_budget = host_budget;
            o.threads = threads;
            o.verify = verify;
            o.max_context = max_context;
            o.prefill_chunk = prefill_chunk;
            o.lock = lock;
            o.max_batch = max_batch;
            o.ring_sections = ring_sections;
            nb::gil_scoped_release release;
            return Model::load(path, o);
          },
          nb::arg("path"), nb::arg("host_budget"), nb::arg("threads") = 0,
          nb::arg("verify") = false, nb::arg("max_context") = 0, nb::arg("prefill_chunk") = 0,
          nb::arg("lock") = true, nb::arg("max_batch") = 1, nb::arg("ring_sections") = 0,
          nb::arg("sparse") = false, nb::arg("sparse_window") = 4, nb::arg("sparse_bundled") = true,
          nb::arg("sparse_capacity") = 0)
      .def_prop_ro("path", [](const Model& self) { return self.package().path; })
      .def_prop_ro("architecture", [](const Model& self) { return self.package().architecture; })
      .def_prop_ro("dtype", [](const Model& self) { return self.package().dtype; })
      .def_prop_ro("format_version",
                   [](const Model& self) { return self.package().format_version; })
      .def_prop_ro("tokenizer_dir", [](const Model& self) { return self.package().tokenizer_dir; })
      .def_prop_ro("config", [](const Model& self) { return config_dict(self.config()); })
      .def_prop_ro("vocab_size", &Model::vocab_size)
      .def_prop_ro("context_length", &Model::context_length)
      .def_prop_ro("prefill_chunk", &Model::prefill_chunk)
      .def_prop_ro("position", [](const Model& self) { return self.position(); })
      .def_prop_ro("max_batch", &Model::max_batch)
      .def("reset", &Model::reset)
      .def(
          "logits",
          [](Model& self, const std::vector<int32_t>& ids) {
            std::vector<float>* out = nullptr;
            {
              nb::gil_scoped_release release;
              out = new std::vector<float>(self.logits(ids));
            }
            nb::capsule owner(out,
                              [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
            return nb::ndarray<nb::numpy, float, nb::ndim<1>>(out->data(), {out->size()}, owner);
          },
          nb::arg("ids"))
      .def(
          "generate",
          [](Model& self, const std::vector<int32_t>& ids, int64_t max_new_tokens,
             float temperature, int64_t top_k, float top_p, uint64_t seed, bool stop_at_eos) {
            GenerateResult result;
            {
              nb::gil_scoped_release release;
              result = generate(
                  self, ids,
                  generate_options(max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos));
            }
            nb::dict d;
            d["output_ids"] = result.output_ids;
            d["finish_reason"] = finish_reason_name(result.finish_reason);
            d["stats"] = generate_stats_dict(result.stats);
            return d;
          },
          nb::arg("ids"), nb::arg("max_new_tokens") = 32, nb::arg("temperature") = 0.0f,
          nb::arg("top_k") = 0, nb::arg("top_p") = 1.0f, nb::arg("seed") = 0,
          nb::arg("stop_at_eos") = true)
      .def(
          "generate_batch",
          [](Model& self, const std::vector<std::vector<int32_t>>& prompts, int64_t max_new_tokens,
             float temperature, int64_t top_k, float top_p, uint64_t seed, bool stop_at_eos) {
            std::vector<GenerateResult> results;
            {
              nb::gil_scoped_release release;
              results = generate_batch(
                  self, prompts,
                  generate_options(max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos));
            }
            nb::list out;
            for (const GenerateResult& result : results) {
              nb::dict d;
              d["output_ids"] = result.output_ids;
              d["finish_reason"] = finish_reason_name(result.finish_reason);
              d["stats"] = generate_stats_dict(result.stats);
              out.append(d);
            }
            return out;
          },
          nb::arg("prompts"), nb::arg("max_new_tokens") = 32, nb::arg("temperature") = 0.0f,
          nb::arg("top_k") = 0, nb::arg("top_p") = 1.0f, nb::arg("seed") = 0,
          nb::arg("stop_at_eos") = true)
      .def("stats", [](const Model& self) { return model_stats_dict(self.stats()); })
      .def("placement", [](const Model& self) { return placement_dict(self.placement()); })
      .def("stream_events",
           [](const Model& self) {
             nb::list t, wait, layer, bytes;
             for (const StreamEventInfo& e : self.stream_events()) {
               t.append(e.t);
               wait.append(e.wait);
               layer.append(e.layer);
               bytes.append(e.bytes_read);
             }
             nb::dict d;
             d["t"] = t;
             d["wait"] = wait;
             d["layer"] = layer;
             d["bytes_read"] = bytes;
             return d;
           })
      .def("sparse_tokens",
           [](const Model& self) {
             nb::list predicted, read, bytes, requests, predictor, io, memory, compute;
             for (const SparseTokenInfo& t : self.sparse_tokens()) {
               predicted.append(t.neurons_predicted);
               read.append(t.neurons_read);
               bytes.append(t.bytes_read);
               requests.append(t.requests);
               predictor.append(t.predictor_seconds);
               io.append(t.io_seconds);
               memory.append(t.memory_seconds);
               compute.append(t.compute_seconds);
             }
             nb::dict d;
             d["neurons_predicted"] = predicted;
             d["neurons_read"] = read;
             d["bytes_read"] = bytes;
             d["requests"] = requests;
             d["predictor_seconds"] = predictor;
             d["io_seconds"] = io;
             d["memory_seconds"] = memory;
             d["compute_seconds"] = compute;
             return d;
           })
      .def(
          "memory_buffers",
          [](const Model& self, int64_t seq) { return buffers_dict(self.memory_buffers(seq)); },
          nb::arg("seq"))
      .def("memory_plan", [](const Model& self) {
        const MemoryPlan& plan = self.memory_plan();
        nb::dict d = buffers_dict(plan.buffers);
        d["seq"] = plan.seq;
        d["peak"] = plan.peak;
        d["lower_bound"] = plan.lower_bound;
        d["source"] = plan.source;
        return d;
      });

  nb::class_<Generator>(m, "Generator")
      .def(
          "__init__",
          [](Generator* self, Model& model, const std::vector<int32_t>& ids, int64_t max_new_tokens,
             float temperature, int64_t top_k, float top_p, uint64_t seed, bool stop_at_eos) {
            new (self) Generator(
                model, ids,
                generate_options(max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos));
          },
          nb::arg("model"), nb::arg("ids"), nb::arg("max_new_tokens") = 32,
          nb::arg("temperature") = 0.0f, nb::arg("top_k") = 0, nb::arg("top_p") = 1.0f,
          nb::arg("seed") = 0, nb::arg("stop_at_eos") = true, nb::keep_alive<1, 2>())
      .def(
          "next",
          [](Generator& self) {
            nb::gil_scoped_release release;
            return self.next();
          },
          "The next token id, or -1 when finished.")
      .def("stop", &Generator::stop)
      .def_prop_ro("done", &Generator::done)
      .def_prop_ro("finish_reason",
                   [](const Generator& self) { return finish_reason_name(self.finish_reason()); })
      .def_prop_ro("output_ids", [](const Generator& self) { return self.output_ids(); })
      .def("stats", [](const Generator& self) { return generate_stats_dict(self.stats()); });
}

}  // namespace tierlm::bindings
