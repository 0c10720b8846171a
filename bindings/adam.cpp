// Fused AdamW on numpy arrays / torch tensors (DLPack, no copy); the GIL is released while
// the kernel runs so a background optimizer thread overlaps Python work.
#include "tierlm/train/adam.hpp"

#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>

#include <optional>
#include <string>

#include "bindings.hpp"
#include "tierlm/core/error.hpp"

namespace nb = nanobind;

namespace tierlm::bindings {

namespace {

using Array = nb::ndarray<nb::c_contig, nb::device::cpu>;

bool is_f32(const Array& a) { return a.dtype() == nb::dtype<float>(); }
// bf16 arrives as DLPack kDLBfloat (torch) or as raw uint16 bits (numpy).
bool is_16bit(const Array& a) {
  return a.dtype().bits == 16 &&
         (a.dtype().code == static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat) ||
          a.dtype() == nb::dtype<uint16_t>() || a.dtype() == nb::dtype<int16_t>());
}

void adam_step_py(Array param, Array grad, Array exp_avg, Array exp_avg_sq, double lr, double beta1,
                  double beta2, double eps, double weight_decay, int64_t step,
                  std::optional<Array> param_bf16) {
  const size_t n = param.size();
  TIERLM_CHECK(is_f32(param) && is_f32(grad), kErrorInvalidArgument,
               "adam_step: param and grad must be float32");
  TIERLM_CHECK(grad.size() == n && exp_avg.size() == n && exp_avg_sq.size() == n,
               kErrorInvalidArgument, "adam_step: param has ", n, " elements but grad has ",
               grad.size(), ", exp_avg ", exp_avg.size(), ", exp_avg_sq ", exp_avg_sq.size());
  AdamTensors t;
  t.n = n;
  t.param = static_cast<float*>(param.data());
  t.grad = static_cast<const float*>(grad.data());
  t.exp_avg = exp_avg.data();
  t.exp_avg_sq = exp_avg_sq.data();
  if (is_f32(exp_avg) && is_f32(exp_avg_sq)) {
    t.state_dtype = AdamStateDType::kAdamStateF32;
  } else {
    TIERLM_CHECK(is_16bit(exp_avg) && is_16bit(exp_avg_sq), kErrorInvalidArgument,
                 "adam_step: exp_avg and exp_avg_sq must both be float32 or both bfloat16");
    t.state_dtype = AdamStateDType::kAdamStateBf16;
  }
  if (param_bf16) {
    TIERLM_CHECK(is_16bit(*param_bf16) && param_bf16->size() == n, kErrorInvalidArgument,
                 "adam_step: param_bf16 must be a bfloat16 array of ", n, " elements");
    t.param_bf16 = static_cast<uint16_t*>(param_bf16->data());
  }
  AdamConfig c;
  c.lr = lr;
  c.beta1 = beta1;
  c.beta2 = beta2;
  c.eps = eps;
  c.weight_decay = weight_decay;
  c.step = step;
  nb::gil_scoped_release release;
  adam_step(c, t);
}

}  // namespace

void bind_adam(nb::module_& m) {
  m.def("adam_step", &adam_step_py, nb::arg("param"), nb::arg("grad"), nb::arg("exp_avg"),
        nb::arg("exp_avg_sq"), nb::arg("lr"), nb::arg("beta1"), nb::arg("beta2"), nb::arg("eps"),
        nb::arg("weight_decay"), nb::arg("step"), nb::arg("param_bf16") = nb::none(),
        "One fused AdamW step in place (torch.optim.AdamW arithmetic); moments f32 or bf16.");
}

}  // namespace tierlm::bindings
