// The I/O engine and the disk tier. Buffers are any C-contiguous CPU array (numpy, torch via
// DLPack, bytearray, memoryview); waits and transfers run with the GIL released. Keeping a
// buffer alive while its request is in flight is the Python layer's job (tierlm.io).
#include "tierlm/io/io.hpp"

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "bindings.hpp"
#include "tierlm/memory/disk_tier.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace tierlm::bindings {

namespace {

using Buffer = nb::ndarray<nb::device::cpu, nb::c_contig>;
using ConstBuffer = nb::ndarray<nb::ro, nb::device::cpu, nb::c_contig>;

IoOptions io_options(const std::string& backend, unsigned queue_depth, bool direct,
                     unsigned threads) {
  IoOptions options;
  options.backend = io_backend_parse(backend);
  options.queue_depth = queue_depth;
  options.direct = direct;
  options.threads = threads;
  return options;
}

template <typename Array>
std::vector<IoRequest> requests_of(nb::handle pairs) {
  std::vector<IoRequest> requests;
  for (nb::handle item : pairs) {
    nb::sequence pair = nb::borrow<nb::sequence>(item);
    if (nb::len(pair) != 2) throw nb::type_error("expected (buffer, offset) pairs");
    nb::object first = pair[0];
    Array array = nb::cast<Array>(first, false);
    requests.push_back({const_cast<void*>(static_cast<const void*>(array.data())), array.nbytes(),
                        nb::cast<uint64_t>(pair[1])});
  }
  return requests;
}

template <typename Array>
std::vector<DiskRequest> disk_requests_of(nb::handle triples) {
  std::vector<DiskRequest> requests;
  for (nb::handle item : triples) {
    nb::sequence triple = nb::borrow<nb::sequence>(item);
    if (nb::len(triple) != 3) throw nb::type_error("expected (extent, buffer, offset) triples");
    nb::object extent = triple[0], buffer = triple[1], offset = triple[2];
    Array array = nb::cast<Array>(buffer, false);
    requests.push_back({&nb::cast<const DiskExtent&>(extent),
                        const_cast<void*>(static_cast<const void*>(array.data())), array.nbytes(),
                        nb::cast<uint64_t>(offset)});
  }
  return requests;
}

const char* const kBufferDoc =
    "buf: a C-contiguous CPU buffer (numpy array, torch tensor, bytearray); its whole size.";

}  // namespace

void bind_io(nb::module_& m) {
  nb::class_<IoFuture>(m, "IoFuture")
      .def("result", &IoFuture::get, nb::call_guard<nb::gil_scoped_release>(),
           "Waits and returns the bytes transferred, or raises the request's error.")
      .def("done", &IoFuture::ready)
      .def("wait", &IoFuture::wait, nb::call_guard<nb::gil_scoped_release>());

  nb::class_<File>(m, "File")
      .def(
          "__init__",
          [](File* self, const std::string& path, const std::string& mode,
             const std::string& backend, unsigned queue_depth, bool direct, unsigned threads) {
            const IoOptions options = io_options(backend, queue_depth, direct, threads);
            const IoMode io_mode = io_mode_parse(mode);
            nb::gil_scoped_release release;
            new (self) File(path, io_mode, options);
          },
          "path"_a, "mode"_a = "r", "backend"_a = "auto", "queue_depth"_a = 32, "direct"_a = true,
          "threads"_a = 0)
      .def(
          "read",
          [](File& f, Buffer buf, uint64_t offset) {
            void* data = buf.data();
            const size_t len = buf.nbytes();
            nb::gil_scoped_release release;
            return f.read(data, len, offset);
          },
          "buf"_a.noconvert(), "offset"_a = 0, kBufferDoc)
      .def(
          "write",
          [](File& f, ConstBuffer buf, uint64_t offset) {
            const void* data = buf.data();
            const size_t len = buf.nbytes();
            nb::gil_scoped_release release;
            return f.write(data, len, offset);
          },
          "buf"_a.noconvert(), "offset"_a = 0, kBufferDoc)
      .def(
          "pread",
          [](File& f, Buffer buf, uint64_t offset) {
            return f.pread(buf.data(), buf.nbytes(), offset);
          },
          "buf"_a.noconvert(), "offset"_a = 0, kBufferDoc)
      .def(
          "pwrite",
          [](File& f, ConstBuffer buf, uint64_t offset) {
            return f.pwrite(buf.data(), buf.nbytes(), offset);
          },
          "buf"_a.noconvert(), "offset"_a = 0, kBufferDoc)
      .def(
          "pread_batch",
          [](File& f, nb::iterable pairs) {
            const std::vector<IoRequest> requests = requests_of<Buffer>(pairs);
            nb::gil_scoped_release release;
            return f.pread_batch(requests);
          },
          "requests"_a, "requests: iterable of (buffer, offset); one submission for all.")
      .def(
          "pwrite_batch",
          [](File& f, nb::iterable pairs) {
            const std::vector<IoRequest> requests = requests_of<ConstBuffer>(pairs);
            nb::gil_scoped_release release;
            return f.pwrite_batch(requests);
          },
          "requests"_a)
      .def(
          "register_buffer",
          [](File& f, Buffer buf) { return f.register_buffer(buf.data(), buf.nbytes()); },
          "buf"_a.noconvert())
      .def(
          "unregister_buffer", [](File& f, Buffer buf) { f.unregister_buffer(buf.data()); },
          "buf"_a.noconvert())
      .def_prop_ro("size", &File::size)
      .def("sync", &File::sync, nb::call_guard<nb::gil_scoped_release>())
      .def("close", &File::close, nb::call_guard<nb::gil_scoped_release>())
      .def_prop_ro("closed", [](const File& f) { return !f.is_open(); })
      .def_prop_ro("path", &File::path)
      .def_prop_ro("backend", [](const File& f) { return io_backend_name(f.backend()); })
      .def_prop_ro("direct", &File::direct)
      .def_prop_ro("direct_reason", &File::direct_reason)
      .def_prop_ro("queue_depth", &File::queue_depth);

  m.def("io_probe", [] {
    const IoProbe& p = io_probe();
    nb::dict d;
    d["chosen"] = io_backend_name(p.chosen);
    d["reason"] = p.reason;
    d["uring_compiled"] = p.uring_compiled;
    d["uring_available"] = p.uring_available;
    return d;
  });
  m.def(
      "io_backend_resolve",
      [](const std::string& requested) {
        std::string reason;
        const IoBackend b = io_backend_resolve(io_backend_parse(requested), &reason);
        return nb::make_tuple(io_backend_name(b), reason);
      },
      "requested"_a = "auto");
  m.def("io_drop_cache", &io_drop_cache, "path"_a);
  m.def("io_trace_record_start", &io_trace_record_start);
  m.def("io_trace_record_stop", [] {
    nb::list out;
    for (const IoTraceRecord& r : io_trace_record_stop()) {
      nb::dict d;
      d["path"] = r.path;
      d["offset"] = r.offset;
      d["len"] = r.len;
      d["submitted"] = r.submitted;
      d["landed"] = r.landed;
      out.append(d);
    }
    return out;
  });
  m.def(
      "io_fault_point",
      [](const std::string& op, const std::string& path, size_t len) {
        io_fault_check();
        const IoFault f = io_fault_point(io_fault_op_parse(op), path, len);
        return nb::make_tuple(f.err, f.len);
      },
      "op"_a, "path"_a, "len"_a,
      "TIERLM_FAULT's word on one call: (errno to fail with or 0, bytes it may move)");
  m.def(
      "io_bench_read",
      [](const std::string& path, size_t block, unsigned queue_depth, const std::string& backend,
         double seconds, bool direct, uint64_t seed) {
        const IoOptions options = io_options(backend, queue_depth, direct, 0);
        IoBenchResult r;
        {
          nb::gil_scoped_release release;
          r = io_bench_read(path, block, queue_depth, options, seconds, seed);
        }
        nb::dict d;
        d["backend"] = io_backend_name(r.backend);
        d["direct"] = r.direct;
        d["registered"] = r.registered;
        d["requests"] = r.requests;
        d["bytes"] = r.bytes;
        d["seconds"] = r.seconds;
        d["bytes_per_second"] = r.bytes_per_second();
        d["iops"] = r.iops();
        return d;
      },
      "path"_a, "block"_a, "queue_depth"_a, "backend"_a = "auto", "seconds"_a = 5.0,
      "direct"_a = true, "seed"_a = 1);

  nb::class_<DiskExtent>(m, "DiskExtent")
      .def_prop_ro("offset", &DiskExtent::offset)
      .def_prop_ro("size", &DiskExtent::size)
      .def_prop_ro("reserved", &DiskExtent::reserved)
      .def_prop_ro("released", [](const DiskExtent& e) { return !e; })
      .def(
          "read",
          [](const DiskExtent& e, Buffer buf, uint64_t offset) {
            void* data = buf.data();
            const size_t len = buf.nbytes();
            nb::gil_scoped_release release;
            return e.read(data, len, offset);
          },
          "buf"_a.noconvert(), "offset"_a = 0)
      .def(
          "write",
          [](DiskExtent& e, ConstBuffer buf, uint64_t offset) {
            const void* data = buf.data();
            const size_t len = buf.nbytes();
            nb::gil_scoped_release release;
            return e.write(data, len, offset);
          },
          "buf"_a.noconvert(), "offset"_a = 0)
      .def(
          "pread",
          [](const DiskExtent& e, Buffer buf, uint64_t offset) {
            return e.pread(buf.data(), buf.nbytes(), offset);
          },
          "buf"_a.noconvert(), "offset"_a = 0)
      .def(
          "pwrite",
          [](DiskExtent& e, ConstBuffer buf, uint64_t offset) {
            return e.pwrite(buf.data(), buf.nbytes(), offset);
          },
          "buf"_a.noconvert(), "offset"_a = 0)
      .def("release", &DiskExtent::release);

  nb::class_<DiskTier>(m, "DiskTier")
      .def(
          "__init__",
          [](DiskTier* self, const std::string& dir, uint64_t budget, const std::string& backend,
             unsigned queue_depth, bool direct) {
            const IoOptions options = io_options(backend, queue_depth, direct, 0);
            nb::gil_scoped_release release;
            new (self) DiskTier(dir, budget, options);
          },
          "dir"_a, "budget"_a, "backend"_a = "auto", "queue_depth"_a = 32, "direct"_a = true)
      .def("allocate", &DiskTier::allocate, "nbytes"_a, nb::call_guard<nb::gil_scoped_release>())
      .def(
          "pread_batch",
          [](const DiskTier& t, nb::iterable triples) {
            const std::vector<DiskRequest> requests = disk_requests_of<Buffer>(triples);
            nb::gil_scoped_release release;
            return t.pread_batch(requests);
          },
          "requests"_a, "requests: iterable of (extent, buffer, offset in the extent).")
      .def(
          "pwrite_batch",
          [](DiskTier& t, nb::iterable triples) {
            const std::vector<DiskRequest> requests = disk_requests_of<ConstBuffer>(triples);
            nb::gil_scoped_release release;
            return t.pwrite_batch(requests);
          },
          "requests"_a)
      .def_prop_ro("budget", &DiskTier::budget)
      .def_prop_ro("available", &DiskTier::available)
      .def_prop_ro("directory", &DiskTier::directory)
      .def_prop_ro("file", &DiskTier::file, nb::rv_policy::reference_internal)
      .def("stats", &DiskTier::stats);
}

}  // namespace tierlm::bindings
