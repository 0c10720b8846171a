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
        if p.device.type != "cpu" or p.dtype != torch.float32:
            raise InvalidArgumentError(
                f"tierlm AdamW steps float32 CPU parameters; got {p.dtype} on {p.device} "
                f"(shape {tuple(p.shape)})"
            )
        if p.grad.is_sparse:
            raise InvalidArgumentError("tierlm AdamW does not support sparse gradients")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group.get("amsgrad") or group.get("maximize"):
                raise InvalidArgumentError("tierlm AdamW: amsgrad and maximize are not supported")
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._check(p)
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=self.moments_dtype)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=self.moments_dtype)
                state["step"] += 1
                param = p if p.is_contiguous() else p.contiguous()
                grad = p.grad if p.grad.is_contiguous() else p.grad.contiguous()
                exp_avg = state["exp_avg"]
                exp_avg_sq = state["exp_avg_sq"]
                if not exp_avg.is_contiguous():
                    state["exp_avg"] = exp_avg = exp_avg.contiguous()
                    state["exp_avg_sq"] = exp_avg_sq = exp_avg_sq.contiguous()
                adam_step(
                    param.detach(),
                    grad,
                    exp_avg,
                    exp_avg_sq,
                    lr=group["lr"],
                    betas=group["betas"],
                    eps=group["eps"],
                    weight_decay=group["weight_decay"],
                    step=int(state["step"].item()),
                )
                if param is not p:
                    p.copy_(param)
        return loss
