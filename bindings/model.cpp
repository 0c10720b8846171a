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

// A numpy array owning out (a vector the caller allocated).
nb::ndarray<nb::numpy, float, nb::ndim<1>> float_array(std::vector<float>* out) {
  nb::capsule owner(out, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
  return nb::ndarray<nb::numpy, float, nb::ndim<1>>(out->data(), {out->size()}, owner);
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

}  // namespace

void bind_model(nb::module_& m) {
  using G = GenerateOptions;
  nb::class_<G>(m, "GenerateOptions", "Sampling and stopping (tierlm/model/generate.hpp)")
      .def(nb::init<>())
      .def_rw("max_new_tokens", &G::max_new_tokens)
      .def_rw("temperature", &G::temperature)
      .def_rw("top_k", &G::top_k)
      .def_rw("top_p", &G::top_p)
      .def_rw("seed", &G::seed)
      .def_rw("stop_at_eos", &G::stop_at_eos)
      .def_rw("repetition_penalty", &G::repetition_penalty)
      .def_rw("repetition_last_n", &G::repetition_last_n);

  nb::class_<Model>(m, "Model")
      .def_static(
          "load",
          [](const std::string& path, uint64_t host_budget, size_t threads, bool verify,
             int64_t max_context, int64_t prefill_chunk, bool lock, int64_t max_batch,
             int64_t ring_sections, bool sparse, int64_t sparse_window, bool sparse_bundled,
             int64_t sparse_capacity, bool sparse_readahead, const std::string& expert_cache,
             bool expert_prefetch, const std::string& kv_dtype, const std::string& kv_policy,
             uint64_t kv_host_budget, uint64_t disk_budget, const std::string& disk_dir) {
            ModelOptions o;
            o.kv_host_budget = kv_host_budget;
            o.disk_budget = disk_budget;
            o.disk_dir = disk_dir;
            o.expert_cache = expert_cache;
            o.expert_prefetch = expert_prefetch;
            o.kv_dtype = dtype_parse(kv_dtype);
            o.kv_policy = kv_policy;
            o.sparse = sparse;
            o.sparse_window = sparse_window;
            o.sparse_bundled = sparse_bundled;
            o.sparse_capacity = sparse_capacity;
            o.sparse_readahead = sparse_readahead;
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
          nb::arg("sparse_capacity") = 0, nb::arg("sparse_readahead") = false,
          nb::arg("expert_cache") = "lru", nb::arg("expert_prefetch") = true,
          nb::arg("kv_dtype") = "f16", nb::arg("kv_policy") = "", nb::arg("kv_host_budget") = 0,
          nb::arg("disk_budget") = UINT64_MAX, nb::arg("disk_dir") = "")
      .def_prop_ro("path", [](const Model& self) { return self.package().path; })
      .def_prop_ro("architecture", [](const Model& self) { return self.package().architecture; })
      .def_prop_ro("dtype", [](const Model& self) { return self.package().dtype; })
      .def_prop_ro("format_version",
                   [](const Model& self) { return self.package().format_version; })
      .def_prop_ro("tokenizer_dir", [](const Model& self) { return self.package().tokenizer_dir; })
      .def_prop_ro("config", &Model::config)
      .def_prop_ro("vocab_size", &Model::vocab_size)
      .def_prop_ro("context_length", &Model::context_length)
      .def_prop_ro("prefill_chunk", &Model::prefill_chunk)
      .def_prop_ro("position", [](const Model& self) { return self.position(); })
      .def_prop_ro("max_batch", &Model::max_batch)
      .def("reset", &Model::reset)
      .def(
          "logits",
          [](Model& self, const std::vector<int32_t>& ids, bool append) {
            std::vector<float>* out = nullptr;
            {
              nb::gil_scoped_release release;
              if (append) {
                const float* last = self.forward(ids, false);
                out = new std::vector<float>(last, last + self.vocab_size());
              } else {
                out = new std::vector<float>(self.logits(ids));
              }
            }
            return float_array(out);
          },
          nb::arg("ids"), nb::arg("append") = false)
      .def(
          "token_nll",
          [](Model& self, const std::vector<int32_t>& ids) {
            std::vector<float>* out = nullptr;
            {
              nb::gil_scoped_release release;
              out = new std::vector<float>(self.token_nll(ids));
            }
            return float_array(out);
          },
          nb::arg("ids"))
      .def(
          "kv_scores",
          [](const Model& self, int32_t slot) {
            return float_array(new std::vector<float>(self.kv_scores(slot)));
          },
          nb::arg("slot") = 0)
      .def(
          "generate",
          [](Model& self, const std::vector<int32_t>& ids, const GenerateOptions& options) {
            nb::gil_scoped_release release;
            return generate(self, ids, options);
          },
          nb::arg("ids"), nb::arg("options"))
      .def(
          "generate_batch",
          [](Model& self, const std::vector<std::vector<int32_t>>& prompts,
             const GenerateOptions& options) {
            nb::gil_scoped_release release;
            return generate_batch(self, prompts, options);
          },
          nb::arg("prompts"), nb::arg("options"))
      .def("stats", &Model::stats)
      .def("placement", &Model::placement)
      .def("expert_placement", &Model::expert_placement)
      .def("expert_usage", &Model::expert_usage)
      .def("stream_events", &Model::stream_events)
      .def("sparse_tokens", &Model::sparse_tokens)
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
      .def(nb::init<Model&, const std::vector<int32_t>&, const GenerateOptions&>(),
           nb::arg("model"), nb::arg("ids"), nb::arg("options"), nb::keep_alive<1, 2>())
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
      .def("stats", &Generator::stats);
}

}  // namespace tierlm::bindings
