"""tierlm.train.AdamW and the fused kernel against torch.optim.AdamW, at every SIMD level."""

import copy

import numpy as np
import pytest
import tierlm.train as tt
import torch
from tierlm import _core
from tierlm.errors import InvalidArgumentError

SIZES = [1, 7, 4097, 1_000_003]


def run_pair(n, steps, moments_dtype="float32", **hyper):
    gen = torch.Generator().manual_seed(n)
    start = torch.randn(n, generator=gen)
    ours = start.clone().requires_grad_()
    ref = start.clone().requires_grad_()
    opt = tt.AdamW([ours], moments_dtype=moments_dtype, **hyper)
    ref_opt = torch.optim.AdamW([ref], **hyper)
    for _ in range(steps):
        g = torch.randn(n, generator=gen)
        ours.grad = g.clone()
        ref.grad = g.clone()
        opt.step()
        ref_opt.step()
    return ours.detach(), ref.detach(), opt, ref_opt


@pytest.mark.parametrize("n", SIZES)
def test_equals_torch_adamw(level, n):
    hyper = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ours, ref, opt, ref_opt = run_pair(n, 4, **hyper)
    # torch's sqrt (MKL VML) is not correctly rounded, ours is: a few ulp of the update apart.
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    # The moments use the same arithmetic as torch and match bit for bit.
    s = opt.state[opt.param_groups[0]["params"][0]]
    r = ref_opt.state[ref_opt.param_groups[0]["params"][0]]
    assert torch.equal(s["exp_avg_sq"], r["exp_avg_sq"])
    torch.testing.assert_close(s["exp_avg"], r["exp_avg"], rtol=1e-6, atol=1e-7)
    assert float(s["step"]) == float(r["step"]) == 4.0
    assert not torch.equal(ours, torch.randn(n, generator=torch.Generator().manual_seed(n)))


def test_levels_agree_with_each_other_and_scalar(simd_levels):
    n = 4099
    outs = {}
    before = _core.cpu_info()["simd_level"]
    try:
        for level in simd_levels:
            _core.set_simd_level(level)
            outs[level] = run_pair(n, 3, lr=1e-3, weight_decay=0.0)[0]
    finally:
        _core.set_simd_level(before)
    for level, out in outs.items():
        torch.testing.assert_close(out, outs["scalar"], rtol=1e-6, atol=1e-7, msg=level)


def test_bf16_moments_and_param_copy(level):
    n = 4097
    p = torch.randn(n)
    g = torch.randn(n)
    ref_p = p.clone()
    m, v = torch.zeros(n), torch.zeros(n)
    m16, v16 = torch.zeros(n, dtype=torch.bfloat16), torch.zeros(n, dtype=torch.bfloat16)
    out16 = torch.empty(n, dtype=torch.bfloat16)
    hyper = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    tt.adam_step(ref_p, g, m, v, step=1, **hyper)
    tt.adam_step(p, g, m16, v16, step=1, out=out16, **hyper)
    # bf16 moments hold the f32 moments rounded to nearest even.
    assert torch.equal(m16, m.to(torch.bfloat16))
    assert torch.equal(v16, v.to(torch.bfloat16))
    assert torch.equal(out16, p.to(torch.bfloat16))
    torch.testing.assert_close(p, ref_p)  # same first step: moments were exact before rounding


def test_bf16_moments_via_optimizer_close_to_f32():
    ours, ref, _, _ = run_pair(4097, 10, moments_dtype="bfloat16", lr=1e-3)
    assert (ours - ref).abs().max() < 1e-3  # 10 steps of lr 1e-3 move params by ~1e-2


def test_numpy_arrays_and_errors():
    n = 7
    p = np.ones(n, np.float32)
    g = np.full(n, 0.5, np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    tt.adam_step(p, g, m, v, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, step=1)
    np.testing.assert_allclose(p, 1 - 0.1, rtol=1e-6)  # first Adam step moves by lr*sign(g)
    with pytest.raises(InvalidArgumentError, match="elements"):
        tt.adam_step(p, g[:3], m, v, lr=0.1, betas=(0.9, 0.9), eps=1e-8, weight_decay=0, step=1)
    with pytest.raises(InvalidArgumentError, match="step"):
        tt.adam_step(p, g, m, v, lr=0.1, betas=(0.9, 0.9), eps=1e-8, weight_decay=0, step=0)
    with pytest.raises(InvalidArgumentError, match="float32"):
        tt.adam_step(
            p.astype(np.float64),
            g,
            m,
            v,
            lr=0.1,
            betas=(0.9, 0.9),
            eps=1e-8,
            weight_decay=0,
            step=1,
        )


def test_state_dict_round_trips_with_torch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Linear(3, 1))
    twin = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Linear(3, 1))
    twin.load_state_dict(model.state_dict())
    ours = tt.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    ref = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.05)
    x = torch.randn(11, 5)
    for net, opt in ((model, ours), (twin, ref)):
        for _ in range(2):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
    # Swap states: torch's goes into ours and vice versa; the next steps stay equal.
    ours_state, ref_state = ours.state_dict(), ref.state_dict()
    ours.load_state_dict(ref_state)
    ref.load_state_dict(ours_state)
    for net, opt in ((model, ours), (twin, ref)):
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert ours.state_dict()["param_groups"][0]["lr"] == 1e-2


def test_cached_views_follow_loaded_state_and_replaced_storage():
    """AdamW.step caches numpy views of param and moments; a loaded state_dict (new moment
    tensors) or a replaced p.data must be stepped, not the stale views."""
    torch.manual_seed(1)
    n = 4097
    hyper = dict(lr=1e-2, weight_decay=0.05)
    p, q = torch.nn.Parameter(torch.randn(n)), torch.nn.Parameter(torch.randn(n))
    ours, other = tt.AdamW([p], **hyper), torch.optim.AdamW([q], **hyper)
    for _ in range(2):  # different grads: the two states differ
        p.grad, q.grad = torch.randn(n), torch.randn(n)
        ours.step()
        other.step()
    # torch's load_state_dict keeps the given tensors when dtypes match: give each a copy.
    ours.load_state_dict(copy.deepcopy(other.state_dict()))
    ref_p = torch.nn.Parameter(p.detach().clone())
    ref = torch.optim.AdamW([ref_p], **hyper)
    ref.load_state_dict(copy.deepcopy(other.state_dict()))
    p.grad = torch.randn(n)
    ref_p.grad = p.grad.clone()
    ours.step()
    ref.step()
    torch.testing.assert_close(p.detach(), ref_p.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.state[p]["exp_avg"], ref.state[ref_p]["exp_avg"])
    # New storage behind the same Parameter.
    fresh = torch.randn(n)
    p.data = fresh.clone()
    ref_p.data = fresh.clone()
    p.grad = torch.randn(n)
    ref_p.grad = p.grad.clone()
    ours.step()
    ref.step()
    torch.testing.assert_close(p.detach(), ref_p.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(p.detach(), fresh)


def test_rejects_bad_hyperparameters():
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(InvalidArgumentError):
        tt.AdamW([p], lr=-1)
    with pytest.raises(InvalidArgumentError):
        tt.AdamW([p], betas=(1.0, 0.9))
    with pytest.raises(InvalidArgumentError, match="bfloat16"):
        tt.AdamW([p], moments_dtype="float16")
