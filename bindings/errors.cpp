// Turns tierlm::Error into Python exceptions: OSError (with errno) for system failures,
// tierlm.errors classes for budget, corruption, invalid arguments and missing features.
#include <nanobind/nanobind.h>

#include "bindings.hpp"
#include "tierlm/core/error.hpp"

namespace nb = nanobind;

namespace tierlm::bindings {

namespace {

const char* python_class(ErrorCode code) {
  switch (code) {
    case ErrorCode::kErrorBudget:
      return "BudgetError";
    case ErrorCode::kErrorCorrupt:
      return "CorruptError";
    case ErrorCode::kErrorUnsupported:
      return "UnsupportedError";
    case ErrorCode::kErrorNotFound:
      return "NotFoundError";
    case ErrorCode::kErrorInvalidArgument:
    case ErrorCode::kErrorIo:
      break;
  }
  return "InvalidArgumentError";
}

void raise(const Error& error) {
  nb::gil_scoped_acquire gil;
  if (error.sys_errno() != 0 &&
      (error.code() == ErrorCode::kErrorIo || error.code() == ErrorCode::kErrorNotFound)) {
    // OSError(errno, text) picks the subclass (FileNotFoundError, PermissionError, ...).
    nb::object exc =
        nb::module_::import_("builtins").attr("OSError")(error.sys_errno(), error.what());
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
    return;
  }
  nb::object cls = nb::module_::import_("tierlm.errors").attr(python_class(error.code()));
  PyErr_SetString(cls.ptr(), error.what());
}

}  // namespace

void bind_errors(nb::module_&) {
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const Error& error) {
      raise(error);
    }
  });
}

}  // namespace tierlm::bindings
