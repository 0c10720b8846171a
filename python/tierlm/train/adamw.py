"""tierlm.train.AdamW: torch.optim.AdamW's arithmetic in one fused native pass per tensor.

A drop-in torch.optim.Optimizer for CPU float32 parameters; its state_dict has torch AdamW's
layout (step, exp_avg, exp_avg_sq per parameter), so checkpoints move between the two.
"""

import torch

from tierlm import _core
from tierlm.errors import InvalidArgumentError

MOMENT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def moments_dtype_of(name):
    """torch dtype of Adam moments from "float32" | "bfloat16" (or a torch dtype)."""
    if isinstance(name, torch.dtype) and name in MOMENT_DTYPES.values():
        return name
    if name in ("f32", "fp32"):
        name = "float32"
    if name in ("bf16",):
        name = "bfloat16"
    if name not in MOMENT_DTYPES:
        raise InvalidArgumentError(
            f"moments_dtype: {name!r} is not one of float32, bfloat16 (bf16 moments move 8 "
            "instead of 12 bytes of state per parameter)"
        )
    return MOMENT_DTYPES[name]


def adam_step(param, grad, exp_avg, exp_avg_sq, *, lr, betas, eps, weight_decay, step, out=None):
    """One fused AdamW step in place on contiguous CPU tensors (or numpy arrays).

    param and grad are float32; the moments are float32 or bfloat16; out (optional) receives
    the updated param as bfloat16. step counts from 1.
    """
    _core.adam_step(
        param,
        grad,
        exp_avg,
        exp_avg_sq,
        float(lr),
        float(betas[0]),
        float(betas[1]),
        float(eps),
        float(weight_decay),
        int(step),
        out,
    )


class AdamW(torch.optim.Optimizer):
    """torch.optim.AdamW (amsgrad=False, maximize=False) on tierlm's fused native kernel.

    moments_dtype="bfloat16" keeps exp_avg / exp_avg_sq in bf16 (fewer bytes, some accuracy).
    """

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=1e-2,
        *,
        moments_dtype="float32",
    ):
        if not 0.0 <= lr:
            raise InvalidArgumentError(f"AdamW: invalid learning rate {lr}")
        if not 0.0 <= eps:
            raise InvalidArgumentError(f"AdamW: invalid eps {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise InvalidArgumentError(f"AdamW: invalid betas {betas}")
        self.moments_dtype = moments_dtype_of(moments_dtype)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=False,
            maximize=False,
            foreach=None,
            capturable=False,
            differentiable=False,
            fused=None,
        )
        super().__init__(params, defaults)

    def _check(self, p):
        if not p.is_cpu or p.dtype != torch.float32:
            raise InvalidArgumentError(
                f"tierlm AdamW steps float32 CPU parameters; got {p.dtype} on {p.device} "
                f"(shape {tuple(p.shape)})"
            )
        if p.grad.is_sparse:
            raise InvalidArgumentError("tierlm AdamW does not support sparse gradients")

    def _views(self, p, param, state):
        """numpy views (no copy) of param and the moments, cached per parameter: handing the
        binding numpy arrays costs ~0.5 us where torch's __dlpack__ costs ~2.5 us per tensor,
        which is most of a small tensor's step. Rebuilt when the param's storage or the state
        tensors change (load_state_dict, p.data = ...)."""
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        cached = self._np_views.get(id(p))
        if (
            cached is not None
            and param is p
            and cached[0] is p
            and cached[1] == p.data_ptr()
            and cached[2] is exp_avg
            and cached[3] is exp_avg_sq
        ):
            return cached[4]
        views = (_np(param.detach()), _np(exp_avg), _np(exp_avg_sq))
        if param is p:
            self._np_views[id(p)] = (p, p.data_ptr(), exp_avg, exp_avg_sq, views)
        return views

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not hasattr(self, "_np_views"):  # also after unpickling / __setstate__
            self._np_views = {}  # id(param) -> (param, data_ptr, exp_avg, exp_avg_sq, views)
        for group in self.param_groups:
            if group.get("amsgrad") or group.get("maximize"):
                raise InvalidArgumentError("tierlm AdamW: amsgrad and maximize are not supported")
            lr, (beta1, beta2) = float(group["lr"]), group["betas"]
            eps, weight_decay = float(group["eps"]), float(group["weight_decay"])
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                self._check(p)
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=self.moments_dtype)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=self.moments_dtype)
                step = int(state["step"].item()) + 1
                state["step"].fill_(step)  # fill_ costs a third of += 1
                param = p if p.is_contiguous() else p.contiguous()
                if not grad.is_contiguous():
                    grad = grad.contiguous()
                if not state["exp_avg"].is_contiguous():
                    state["exp_avg"] = state["exp_avg"].contiguous()
                    state["exp_avg_sq"] = state["exp_avg_sq"].contiguous()
                param_np, exp_avg_np, exp_avg_sq_np = self._views(p, param, state)
                _core.adam_step(
                    param_np,
                    _np(grad.detach()),
                    exp_avg_np,
                    exp_avg_sq_np,
                    lr,
                    float(beta1),
                    float(beta2),
                    eps,
                    weight_decay,
                    step,
                    None,
                )
                if param is not p:
                    p.copy_(param)
        return loss


def _np(t):
    """A numpy view of a CPU tensor (bf16 as its uint16 bits, which the binding takes as bf16)."""
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy()
