"""Offloaded fine-tuning equals plain torch AdamW training, within budgets, on both back ends."""

import gc
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import weakref

import pytest
import tierlm
import tierlm.train as tt
import torch
from models import rss_bytes
from tierlm.errors import BudgetError, CorruptError
from train_helpers import (
    HYPER,
    MODELS,
    assert_params_close,
    batches,
    llama,
    train_offloaded,
    train_reference,
    twin,
)

pytest.importorskip("transformers")

STEPS = 10
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # Tiny models: OpenMP workers spinning beside the optimizer and I/O threads on a shared
    # 2-core runner cost 30x; one intra-op thread keeps these tests in seconds.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def budget_for(plan, fraction):
    return plan["minimum"] + int((plan["all_host"] - plan["minimum"]) * fraction)


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.0], ids=["host100", "host50", "minimum"])
@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_equals_torch_adamw(arch, fraction, backend, tmp_path):
    model = MODELS[arch]()
    ref = twin(model)
    data = batches(model, STEPS)
    plan = tt.offload_plan(model)
    budget = budget_for(plan, fraction)
    trainer = tt.offload(
        model, budget={"host": budget}, disk_dir=str(tmp_path), io_backend=backend, **HYPER
    )
    homes = trainer.homes()
    if fraction == 1.0:
        assert set(homes.values()) == {"host"}
    else:
        assert "disk" in homes.values(), homes
    if fraction == 0.0:
        assert all(h == "disk" for n, h in homes.items() if n != "root"), homes
    losses, stats = train_offloaded(model, trainer, data)
    ref_losses = train_reference(ref, data)
    torch.testing.assert_close(losses, ref_losses, rtol=1e-5, atol=0)
    assert_params_close(trainer.state_dict(), ref)
    for s in stats:
        assert s["host_peak"] <= budget
        assert s["host_budget"] == budget
    if fraction < 1.0:
        assert stats[-1]["disk_read_bytes"] > 0 and stats[-1]["disk_write_bytes"] > 0
        if backend == "uring":
            assert trainer.disk.backend == "uring"
    trainer.close()
    # close() hands the model back as plain torch: same values, usable directly.
    assert_params_close(dict(model.named_parameters()), ref)


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_pipeline_placement_spreads_disk_blocks_and_prefetches(depth, tmp_path):
    # 7 blocks, a budget for some of them on host: disk blocks are spread (no two adjacent while
    # there is room), a deeper pipeline keeps fewer blocks on host, the forward reads no disk
    # block synchronously, and the result still equals torch.
    model = llama(layers=7, hidden=48)
    ref = twin(model)
    data = batches(model, 3)
    plan = tt.offload_plan(model)
    budget = budget_for(plan, 0.8)
    trainer = tt.offload(
        model, budget={"host": budget}, disk_dir=str(tmp_path), pipeline_depth=depth, **HYPER
    )
    homes = [trainer.homes()[f"block{i}"] for i in range(7)]
    n_disk = homes.count("disk")
    assert 0 < n_disk < 7, homes
    if n_disk <= 3:
        assert not any(a == b == "disk" for a, b in zip(homes, homes[1:], strict=False)), homes
    if depth == 2:
        shallow = tt.offload(
            llama(layers=7, hidden=48),
            budget={"host": budget},
            disk_dir=str(tmp_path),
            pipeline_depth=0,
            **HYPER,
        )
        assert list(shallow.homes().values()).count("disk") < n_disk
        shallow.close()
    losses, stats = train_offloaded(model, trainer, data)
    torch.testing.assert_close(losses, train_reference(ref, data), rtol=1e-5, atol=0)
    assert_params_close(trainer.state_dict(), ref)
    assert all(s["host_peak"] <= budget for s in stats)
    if depth >= 1:
        # Forward (no optimizer steps in flight): every disk block was prefetched, the first
        # one at the end of the previous step, and the last one stays for the backward.
        # (Backward misses depend on how far the optimizer thread lags: not asserted.)
        assert stats[-1]["prefetch_misses_forward"] == 0, stats[-1]
        first = next(u for u in trainer.blocks if u.home == "disk")
        assert first.prefetch is not None
    trainer.close()


def test_closed_trainer_is_freed_at_once_and_refuses_work():
    # No reference cycle is left once closed: its host tier goes when it is dropped, not at a
    # later garbage collection (a training loop that makes trainers would hold several).
    model = llama()
    data = batches(model, 2)
    trainer = tt.offload(model, **HYPER)
    train_offloaded(model, trainer, data[:1])
    trainer.close()
    trainer.close()
    with pytest.raises(tierlm.InvalidArgumentError, match="closed"):
        trainer.step()
    gc.disable()
    try:
        alive = weakref.ref(trainer)
        del trainer
        assert alive() is None
    finally:
        gc.enable()
    model(input_ids=data[1], labels=data[1]).loss.backward()  # a plain torch model again


def test_pipeline_depth_negative_is_an_error():
    with pytest.raises(tierlm.errors.InvalidArgumentError, match="pipeline_depth"):
        tt.offload(llama(), pipeline_depth=-1, **HYPER)


def test_non_float32_model_or_unknown_device_is_refused():
    with pytest.raises(tierlm.errors.UnsupportedError, match=r"embed_tokens.*model\.float\(\)"):
        tt.offload(llama().to(torch.bfloat16), **HYPER)
    with pytest.raises(tierlm.errors.UnsupportedError, match=r"cannot compute on meta"):
        tt.offload(llama().to("meta"), **HYPER)
    with pytest.raises(tierlm.errors.UnsupportedError, match=r"cannot compute on meta"):
        tt.offload(llama(), device="meta", **HYPER)


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.0], ids=["host100", "host50", "minimum"])
@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_compute_device_copies_equal_torch_adamw(arch, fraction, tmp_path):
    # device="cpu" runs the GPU path's logic here: blocks compute on copies of their
    # parameters, made from the home tier before forward and backward, gradients copied back.
    model = MODELS[arch]()
    ref = twin(model)
    data = batches(model, STEPS)
    budget = budget_for(tt.offload_plan(model), fraction)
    trainer = tt.offload(
        model, budget={"host": budget}, disk_dir=str(tmp_path), device="cpu", **HYPER
    )
    losses, stats = train_offloaded(model, trainer, data)
    torch.testing.assert_close(losses, train_reference(ref, data), rtol=1e-5, atol=0)
    assert_params_close(trainer.state_dict(), ref)
    n_params = sum(p.numel() for p in model.parameters())
    for s in stats:
        assert s["host_peak"] <= budget
        assert s["device_bytes_in"] >= n_params * 4  # every block in for forward (and backward)
        assert s["device_bytes_out"] > 0
    # Between steps only the root unit (embeddings, head) holds compute copies.
    root = trainer.units[0]
    for u in trainer.units:
        for p in u.params:
            assert (p.stride() == (0,) * p.dim()) == (u is not root), u.name
    trainer.close()
    assert_params_close(dict(model.named_parameters()), ref)


def test_compute_device_offloads_activations_to_the_host_tier(tmp_path):
    model = llama()
    ref = twin(model)
    data = batches(model, 4)
    plan = tt.offload_plan(model)
    trainer = tt.offload(
        model,
        budget={"host": plan["all_host"] * 2},
        device="cpu",
        checkpoint_activations=False,
        offload_activations=True,
        **HYPER,
    )
    losses, stats = train_offloaded(model, trainer, data)
    torch.testing.assert_close(losses, train_reference(ref, data), rtol=1e-5, atol=0)
    assert_params_close(trainer.state_dict(), ref)
    assert all(s["activation_bytes_offloaded"] > 0 for s in stats)
    assert all(s["host_peak"] <= plan["all_host"] * 2 for s in stats)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device in this torch build")
def test_cuda_model_trains_on_the_gpu_equal_to_torch(tmp_path):
    torch.backends.cuda.matmul.allow_tf32 = False
    model = llama().cuda()
    ref = twin(model)
    data = batches(model, 5)
    budget = budget_for(tt.offload_plan(model), 0.5)
    trainer = tt.offload(model, budget={"host": budget}, disk_dir=str(tmp_path), **HYPER)
    assert trainer.device.type == "cuda"
    losses, stats = train_offloaded(model, trainer, data, device="cuda")
    ref_losses = train_reference(ref, [ids.cuda() for ids in data])
    torch.testing.assert_close(losses, ref_losses, rtol=1e-4, atol=0)
    got = {name: value.cuda() for name, value in trainer.state_dict().items()}
    assert_params_close(got, ref, rtol=1e-4)
    assert stats[-1]["device_bytes_in"] > 0 and stats[-1]["disk_read_bytes"] > 0


def test_minimum_budget_error():
    model = llama()
    plan = tt.offload_plan(model)
    with pytest.raises(BudgetError, match=str(plan["minimum"])):
        tt.offload(model, budget={"host": plan["minimum"] - 1}, disk_dir="/tmp", **HYPER)


def test_disk_dir_missing_is_a_clear_error(tmp_path):
    model = llama()
    plan = tt.offload_plan(model)
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        tt.offload(model, budget={"host": plan["minimum"]}, disk_dir=missing, **HYPER)
    # The model is untouched and still trains plainly.
    assert all(p.stride() != (0,) * p.dim() for p in model.parameters())


def test_disk_budget_too_small(tmp_path):
    model = llama()
    plan = tt.offload_plan(model)
    with pytest.raises(BudgetError, match="disk"):
        tt.offload(
            model, budget={"host": plan["minimum"], "disk": 8192}, disk_dir=str(tmp_path), **HYPER
        )


def test_frozen_parameters_get_no_state_and_stay_fixed(tmp_path):
    model = llama()
    for name, p in model.named_parameters():
        if "mlp" in name or "embed" in name:
            p.requires_grad_(False)
    ref = twin(model)
    data = batches(model, 4)
    plan = tt.offload_plan(model)
    trainer = tt.offload(model, budget={"host": plan["minimum"]}, disk_dir=str(tmp_path), **HYPER)
    full_plan = tt.offload_plan(llama())
    assert plan["minimum"] < full_plan["minimum"]  # no Adam state for frozen parameters
    losses, _ = train_offloaded(model, trainer, data)
    ref_losses = train_reference(ref, data)
    torch.testing.assert_close(losses, ref_losses, rtol=1e-5, atol=0)
    assert_params_close(trainer.state_dict(), ref)
    trainer.close()


def test_lora_on_streamed_base_equals_peft(tmp_path):
    peft = pytest.importorskip("peft", reason="peft not installed (pip install peft)")
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    base = llama()
    model = peft.get_peft_model(base, cfg)
    for name, p in model.named_parameters():  # LoRA B starts at zero: make the test bite
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    ref = twin(model)
    data = batches(model, 5)
    plan = tt.offload_plan(model)
    trainer = tt.offload(model, budget={"host": plan["minimum"]}, disk_dir=str(tmp_path), **HYPER)
    assert "disk" in trainer.homes().values()
    losses, _ = train_offloaded(model, trainer, data)
    ref_losses = train_reference(ref, data)
    torch.testing.assert_close(losses, ref_losses, rtol=1e-5, atol=0)
    got = trainer.state_dict()
    assert_params_close(got, ref)
    before = dict(twin(llama()).named_parameters())
    base_q = [n for n in got if n.endswith("q_proj.base_layer.weight")][0]
    stripped = base_q.replace("base_model.model.", "").replace(".base_layer", "")
    assert torch.equal(got[base_q], before[stripped])  # the frozen base never moved


def test_without_activation_checkpointing(tmp_path):
    model = llama()
    ref = twin(model)
    data = batches(model, 4)
    plan = tt.offload_plan(model)
    trainer = tt.offload(
        model,
        budget={"host": plan["minimum"]},
        disk_dir=str(tmp_path),
        checkpoint_activations=False,
        **HYPER,
    )
    losses, _ = train_offloaded(model, trainer, data)
    torch.testing.assert_close(losses, train_reference(ref, data), rtol=1e-5, atol=0)
    assert_params_close(trainer.state_dict(), ref)


def test_bf16_moments_close_to_f32(tmp_path):
    model = llama()
    ref = twin(model)
    data = batches(model, 6)
    plan16 = tt.offload_plan(model, moments_dtype="bfloat16")
    assert plan16["minimum"] < tt.offload_plan(model)["minimum"]
    trainer = tt.offload(
        model,
        budget={"host": plan16["minimum"]},
        disk_dir=str(tmp_path),
        moments_dtype="bfloat16",
        **HYPER,
    )
    losses, _ = train_offloaded(model, trainer, data)
    ref_losses = train_reference(ref, data)
    assert abs(losses[-1] - ref_losses[-1]) < 0.05 * ref_losses[-1]
    assert losses[-1] < losses[0]


def test_budget_holds_in_rss(tmp_path):
    # ~2.4M params: all-host state would be ~40 MB; the minimum budget is a fraction of it.
    model = llama(layers=6, hidden=160)
    plan = tt.offload_plan(model)
    assert plan["all_host"] > 3 * plan["minimum"]
    data = batches(model, 2, length=5)
    trainer = tt.offload(model, budget={"host": plan["minimum"]}, disk_dir=str(tmp_path), **HYPER)
    base = rss_bytes()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        _, stats = train_offloaded(model, trainer, data)
    finally:
        stop.set()
        sampler.join()
    assert all(s["host_peak"] <= plan["minimum"] for s in stats)
    # Growth beyond the tier budget is activations and allocator slack, far below all-host.
    assert peak[0] - base < plan["minimum"] + 0.5 * (plan["all_host"] - plan["minimum"]), (
        peak[0] - base,
        plan,
    )


def test_stats_report_bytes_times_and_overlap(tmp_path):
    model = llama()
    plan = tt.offload_plan(model)
    trainer = tt.offload(model, budget={"host": plan["minimum"]}, disk_dir=str(tmp_path), **HYPER)
    _, stats = train_offloaded(model, trainer, batches(model, 2))
    s = stats[-1]
    for key in (
        "loss",
        "wall_s",
        "compute_s",
        "io_wait_s",
        "optimizer_s",
        "overlap",
        "disk_read_bytes",
        "disk_write_bytes",
        "host_peak",
        "disk_peak",
    ):
        assert key in s, key
    assert 0.0 <= s["overlap"] <= 1.0
    assert s["optimizer_s"] > 0
    n_blocks = sum(u.n_total for u in trainer.blocks)
    # Each disk-homed block's params are read at least twice (forward and recompute).
    assert s["disk_read_bytes"] >= 2 * 4 * n_blocks


# ----------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("device", [None, "cpu"], ids=["in-place", "device-copies"])
def test_save_resume_round_trip(device, tmp_path):
    model = llama()
    data = batches(model, 5)
    plan = tt.offload_plan(model)
    budget = budget_for(plan, 0.5)
    opts = dict(budget={"host": budget}, disk_dir=str(tmp_path), device=device, **HYPER)
    trainer = tt.offload(model, **opts)
    train_offloaded(model, trainer, data[:3])
    path = trainer.save(str(tmp_path / "ckpt"))
    assert os.path.isdir(path)
    after, _ = train_offloaded(model, trainer, data[3:])
    final = trainer.state_dict()
    trainer.close()

    fresh = llama(seed=7)
    trainer2 = tt.offload(fresh, **opts)
    assert trainer2.resume(str(tmp_path / "ckpt")) == 3
    again, _ = train_offloaded(fresh, trainer2, data[3:])
    assert again == after
    for name, value in trainer2.state_dict().items():
        assert torch.equal(value, final[name]), name


def damage(path, how):
    if how == "flip":
        with open(path, "r+b") as f:
            f.seek(100)
            b = f.read(1)
            f.seek(100)
            f.write(bytes([b[0] ^ 0xFF]))
    else:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 4)


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damaged_checkpoint_names_the_file(tmp_path, how):
    model = llama()
    trainer = tt.offload(model, disk_dir=str(tmp_path), **HYPER)
    train_offloaded(model, trainer, batches(model, 1))
    path = trainer.save(str(tmp_path / "ckpt"))
    victim = os.path.join(path, "unit-0002.bin")
    damage(victim, how)
    with pytest.raises(CorruptError, match="unit-0002.bin"):
        trainer.resume(str(tmp_path / "ckpt"))
    with pytest.raises(FileNotFoundError, match="LATEST"):
        trainer.resume(str(tmp_path / "empty"))


def test_checkpoint_names_outside_the_checkpoint_are_refused(tmp_path):
    # A unit file moved out of the checkpoint, with its size and CRC intact, was read through
    # a relative name in the manifest; LATEST could name any folder.
    model = llama(layers=1)
    trainer = tt.offload(model, disk_dir=str(tmp_path), **HYPER)
    path = trainer.save(str(tmp_path / "ckpt"))
    manifest = os.path.join(path, "manifest.json")
    with open(manifest) as f:
        meta = json.load(f)
    record = meta["units"][0]
    os.replace(os.path.join(path, record["file"]), tmp_path / "outside.bin")
    record["file"] = "../../outside.bin"
    with open(manifest, "w") as f:
        json.dump(meta, f)
    with pytest.raises(CorruptError, match="not a file name inside the checkpoint"):
        trainer.resume(str(tmp_path / "ckpt"))
    (tmp_path / "ckpt" / "LATEST").write_text(f"../{os.path.basename(path)}\n")
    with pytest.raises(CorruptError, match="not a checkpoint folder inside"):
        trainer.resume(str(tmp_path / "ckpt"))


def saved_state(path):
    """The manifest and unit files of a saved checkpoint (everything the trainer holds)."""
    with open(os.path.join(path, "manifest.json")) as f:
        manifest = json.load(f)
    files = {}
    for record in manifest["units"]:
        with open(os.path.join(path, record["file"]), "rb") as f:
            files[record["file"]] = f.read()
    return manifest, files


@pytest.mark.parametrize("how", ["flip", "truncate", "missing"])
def test_failed_resume_leaves_the_trainer_as_it_was(tmp_path, how):
    # The last unit's file is damaged, so every other unit would load before it fails. The
    # trainer must be exactly as before (params, moments and steps of host and disk units)
    # and go on training equal to torch.
    model = llama()
    ref = twin(model)
    data = batches(model, 6)
    budget = budget_for(tt.offload_plan(model), 0.5)
    trainer = tt.offload(model, budget={"host": budget}, disk_dir=str(tmp_path), **HYPER)
    assert set(trainer.homes().values()) == {"host", "disk"}
    train_offloaded(model, trainer, data[:2])
    path = trainer.save(str(tmp_path / "ckpt"))
    train_offloaded(model, trainer, data[2:4])
    before = saved_state(trainer.save(str(tmp_path / "before")))
    victim = os.path.join(path, f"unit-{len(trainer.units) - 1:04d}.bin")
    if how == "missing":
        os.remove(victim)
    else:
        damage(victim, how)
    with pytest.raises(CorruptError, match=os.path.basename(victim)):
        trainer.resume(str(tmp_path / "ckpt"))
    assert saved_state(trainer.save(str(tmp_path / "after"))) == before
    losses, _ = train_offloaded(model, trainer, data[4:])
    ref_losses = train_reference(ref, data)
    torch.testing.assert_close(losses, ref_losses[4:], rtol=1e-5, atol=0)
    assert_params_close(trainer.state_dict(), ref)


def test_file_changed_during_resume_makes_the_trainer_unusable(tmp_path, monkeypatch):
    # A file that passes the check and is damaged before it is loaded (another process
    # writing it) is found while overwriting: the trainer refuses to train on the mix until
    # a resume succeeds.
    from tierlm.train import checkpoint

    model = llama()
    ref = twin(model)
    data = batches(model, 4)
    trainer = tt.offload(model, disk_dir=str(tmp_path), **HYPER)
    train_offloaded(model, trainer, data[:2])
    first = trainer.save(str(tmp_path / "first"))
    trainer.save(str(tmp_path / "second"))
    train_offloaded(model, trainer, data[2:3])
    last = f"unit-{len(trainer.units) - 1:04d}.bin"
    read_file = checkpoint.read_file

    def damaged_after_check(path, record, want):
        if record["file"] == last:
            damage(os.path.join(path, last), "flip")
        return read_file(path, record, want)

    monkeypatch.setattr(checkpoint, "read_file", damaged_after_check)
    with pytest.raises(CorruptError, match=os.path.join(first, last)):
        trainer.resume(str(tmp_path / "first"))
    monkeypatch.undo()
    with pytest.raises(tierlm.InvalidArgumentError, match="resume.*partly restored"):
        trainer.step()
    assert trainer.resume(str(tmp_path / "second")) == 2
    losses, _ = train_offloaded(model, trainer, data[2:])
    torch.testing.assert_close(losses, train_reference(ref, data)[2:], rtol=1e-5, atol=0)
    assert_params_close(trainer.state_dict(), ref)


KILL_CHILD = r"""
import sys, torch
sys.path.insert(0, {here!r})
from train_helpers import HYPER, llama, batches, train_offloaded
import tierlm.train as tt
model = llama(layers=4, hidden=256)
trainer = tt.offload(model, disk_dir={tmp!r}, **HYPER)
data = batches(model, 2)
train_offloaded(model, trainer, data[:1])
trainer.save({ckpt!r})
torch.save(trainer.state_dict(), {expect!r})
train_offloaded(model, trainer, data[1:])
print("saving", flush=True)
while True:
    trainer.save({ckpt!r})
"""


def test_kill_during_save_leaves_previous_checkpoint(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    expect = str(tmp_path / "expect.pt")
    script = KILL_CHILD.format(here=HERE, tmp=str(tmp_path), ckpt=ckpt, expect=expect)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "saving"
        deadline = time.time() + 60
        # Kill while a save is writing its temporary directory (before LATEST moves).
        while time.time() < deadline:
            if any(e.endswith(".tmp") for e in os.listdir(ckpt)):
                os.kill(child.pid, signal.SIGKILL)
                break
            time.sleep(0.0005)
        else:
            pytest.fail("the child never started a save")
    finally:
        child.kill()
        child.wait()
    assert any(e.endswith(".tmp") for e in os.listdir(ckpt))
    model = llama(layers=4, hidden=256, seed=3)
    trainer = tt.offload(model, disk_dir=str(tmp_path), **HYPER)
    step = trainer.resume(ckpt)
    got = trainer.state_dict()
    expected = torch.load(expect)
    if step == 1:
        for name, value in expected.items():
            assert torch.equal(got[name], value), name
    else:  # a later save completed before the kill; it must be whole too (CRCs checked)
        assert step == 2


def test_write_failure_mid_step_then_resume(tmp_path):
    # RLIMIT_FSIZE makes writes past 4 KiB fail (EFBIG), as a full disk fails them.
    model = llama()
    ref = twin(model)
    data = batches(model, 4)
    plan = tt.offload_plan(model)
    trainer = tt.offload(model, budget={"host": plan["minimum"]}, disk_dir=str(tmp_path), **HYPER)
    train_offloaded(model, trainer, data[:2])
    trainer.save(str(tmp_path / "ckpt"))
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, old[1]))

        def one_step():  # its frame (graph, buffers) dies with the traceback below
            loss = model(input_ids=data[2], labels=data[2]).loss
            trainer.backward(loss)
            trainer.step()

        with pytest.raises(OSError) as info:
            one_step()
        assert "large" in str(info.value) or "space" in str(info.value), info.value
        del info  # its traceback would keep the failed step's buffers alive
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)
    with pytest.raises(tierlm.InvalidArgumentError, match="resume"):
        trainer.step()
    assert trainer.resume(str(tmp_path / "ckpt")) == 2
    losses, _ = train_offloaded(model, trainer, data[2:])
    ref_losses = train_reference(ref, data)
    torch.testing.assert_close(losses, ref_losses[2:], rtol=1e-5, atol=0)
    assert_params_close(trainer.state_dict(), ref)


# ----------------------------------------------------------------- data parallel

DP_WORKER = r"""
import sys, torch, torch.distributed as dist
sys.path.insert(0, {here!r})
torch.set_num_threads(1)
from train_helpers import HYPER, llama, batches
import tierlm.train as tt
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{port}", rank=rank, world_size=2)
model = llama()
data = batches(model, {steps}, batch=4)
plan = tt.offload_plan(model)
trainer = tt.offload(model, budget={{"host": plan["minimum"]}}, disk_dir={tmp!r}, **HYPER)
assert "disk" in trainer.homes().values()
for ids in data:
    mine = ids[2 * rank : 2 * rank + 2]
    loss = model(input_ids=mine, labels=mine).loss
    trainer.backward(loss)
    trainer.step()
    trainer.zero_grad()
state = trainer.state_dict()
torch.save(state, {out!r} + str(rank))
dist.destroy_process_group()
"""


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_data_parallel_two_ranks_equal_single_process(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    steps = 3
    out = str(tmp_path / "state")
    script = DP_WORKER.format(here=HERE, port=free_port(), steps=steps, tmp=str(tmp_path), out=out)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(r)]) for r in range(2)]
    try:
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0, 0]
    ref = llama()
    data = batches(ref, steps, batch=4)
    train_reference(ref, data)  # one process, the global batch of 4
    for rank in range(2):
        assert_params_close(torch.load(out + str(rank)), ref)


@pytest.mark.parametrize("device", [None, "cpu"], ids=["in-place", "device-copies"])
def test_example_finetune_runs(device, tmp_path):
    example = os.path.join(HERE, "..", "..", "examples", "finetune.py")
    if not os.path.exists(example):
        pytest.skip("examples/ is not next to the tests (installed package only)")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run(
        [
            sys.executable,
            example,
            "--layers",
            "2",
            "--hidden",
            "64",
            "--steps",
            "6",
            "--disk-dir",
            str(tmp_path),
            "--save",
            str(tmp_path / "ckpt"),
        ]
        + (["--device", device] if device else []),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "finetune" in run.stderr and "loss=" in run.stderr  # the tqdm bar
    assert "units on disk" in run.stdout
    assert os.path.exists(tmp_path / "ckpt" / "LATEST")
