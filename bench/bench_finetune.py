"""Claim: offloaded fine-tuning of a model whose f32 weights + AdamW state exceed the host
budget runs within 1.1x of max(compute time, I/O bound), the state living on disk.

    OMP_WAIT_POLICY=passive python bench/bench_finetune.py [--layers 36 --hidden 1024
        --vocab 32000 --batch 1 --length 128 --budget 4GiB --steps 3 --rounds 2
        --disk-dir DIR]

The defaults are a ~0.5B-parameter Llama (f32 weights + AdamW state ~8 GB) under a 4 GiB
host budget. One table: step time (median) of
- plain torch: the same model + torch fused AdamW in RAM (this is the compute time);
- tierlm offload under the host budget, the blocks that do not fit on disk;
each without and with activation checkpointing (compared with the plain torch step of the same
setting); the disk bytes a step moves, the I/O bound (those bytes at the engine's read and
write bandwidth, measured in the same run with O_DIRECT requests of the trainer's sizes and
concurrency) and the ratio to max(compute, I/O bound). Plain torch and offload phases
alternate (--rounds), ckpt on/off alternate step by step inside a phase, and the bandwidth is
measured before each offload phase, so load from other processes falls on all alike. One model
lives at a time: the offload trainer takes the plain model's parameters and gives them back.
"""

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time

import numpy as np
import tierlm
import tierlm.train as tt
import torch
from tierlm.sizes import round_up
from tierlm.tiers import PAGE
from tierlm.train.disk_home import DiskHome
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import require_close  # noqa: E402


def build(args):
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3 // 64 * 64,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 64,
        max_position_embeddings=max(128, args.length),
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).float()
    model.config.use_cache = False
    return model


def _stream(submit, bufs, nbytes, request, inflight):
    """Seconds to move nbytes in `request`-byte requests, `inflight` of them outstanding."""
    pending = []
    t0 = time.perf_counter()
    for i, off in enumerate(range(0, nbytes, request)):
        if len(pending) == inflight:
            pending.pop(0).result()
        pending.append(submit(bufs[i % len(bufs)], off))
    for f in pending:
        f.result()
    return time.perf_counter() - t0


def engine_bandwidth(directory, request, inflight_read, inflight_write, nbytes=1 << 30):
    """(read, write) bytes/s of the trainer's disk path (tierlm.train.disk_home on the I/O engine,
    O_DIRECT), requests of `request` bytes with the trainer's number in flight."""
    request = round_up(request, PAGE)
    nbytes = max(nbytes // request, 4) * request
    home = DiskHome(directory, 2 * nbytes)
    extent = home.allocate(nbytes, "bandwidth probe")
    host = tierlm.HostTier(max(inflight_read, inflight_write) * request, lock=False)
    bufs = [host.allocate(request).numpy() for _ in range(max(inflight_read, inflight_write))]
    for b in bufs:
        b[:] = 7
    _stream(lambda b, off: extent.pwrite(b, off), bufs, nbytes, request, inflight_write)
    w = _stream(lambda b, off: extent.pwrite(b, off), bufs, nbytes, request, inflight_write)
    r = _stream(lambda b, off: extent.pread(b, off), bufs, nbytes, request, inflight_read)
    return nbytes / r, nbytes / w


class Plain:
    """The model + torch fused AdamW in RAM; HF activation checkpointing toggled per step."""

    def __init__(self, model, data):
        self.model, self.data = model, data
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=True)

    def step(self, ckpt):
        if ckpt:
            self.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        else:
            self.model.gradient_checkpointing_disable()
        loss = self.model(input_ids=self.data, labels=self.data).loss
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {}

    def close(self):
        self.model.gradient_checkpointing_disable()
        self.opt.zero_grad(set_to_none=True)
        self.opt = None


class Offload:
    """tierlm offload of the same model; the trainer's checkpointing toggled per step."""

    def __init__(self, model, data, budget, disk_dir, pipeline_depth):
        self.model, self.data = model, data
        self.trainer = tt.offload(
            model,
            budget={"host": budget},
            disk_dir=disk_dir,
            lr=1e-4,
            weight_decay=0.0,
            pipeline_depth=pipeline_depth,
        )

    def step(self, ckpt):
        self.trainer.checkpoint_activations = ckpt
        loss = self.model(input_ids=self.data, labels=self.data).loss
        self.trainer.backward(loss)
        stats = self.trainer.step()
        self.trainer.zero_grad()
        return stats

    def close(self):
        homes = self.trainer.homes()
        self.trainer.close(restore=True)
        return homes


def check_against_torch(args, disk_dir):
    """Two steps of tierlm offload against two of plain torch fused AdamW from the same start,
    on a 2-layer model of the bench's width at its minimum host budget (state homed on disk): the
    parameter updates must agree, or the bench exits before timing anything."""
    small = argparse.Namespace(**{**vars(args), "layers": 2})
    data = torch.randint(0, args.vocab, (args.batch, args.length))
    start = torch.cat([p.detach().reshape(-1) for p in build(small).parameters()])
    updates = []
    for make in (
        lambda m: Plain(m, data),
        lambda m: Offload(m, data, tt.offload_plan(m)["minimum"], disk_dir, args.pipeline_depth),
    ):
        model = build(small)
        runner = make(model)
        for _ in range(2):
            runner.step(False)
        runner.close()
        after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        updates.append((after - start).numpy())
    require_close(
        "tierlm offload at its minimum budget vs torch fused AdamW, 2 steps' updates",
        updates[1],
        updates[0],
        1e-4,
    )


def run_phase(runner, steps, times, stats, prefix):
    """One warm-up step per setting, then `steps` steps alternating ckpt off / on."""
    for ckpt in (False, True):
        runner.step(ckpt)
    for _ in range(steps):
        for ckpt in (False, True):
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            s = runner.step(ckpt)
            r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            times[(prefix, ckpt)].append(t1 - t0)
            cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            stats[(prefix, ckpt)].append(dict(s, cpu_s=cpu))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="measured steps per phase and setting")
    ap.add_argument("--rounds", type=int, default=2, help="plain / offload phase pairs")
    ap.add_argument("--budget", default="4GiB")
    ap.add_argument("--pipeline-depth", type=int, default=2, help="offload(pipeline_depth=)")
    ap.add_argument("--disk-dir", default=None)
    args = ap.parse_args(argv)
    disk_dir = args.disk_dir or tempfile.mkdtemp(prefix="tierlm-bench-")
    check_against_torch(args, disk_dir)
    model = build(args)
    n = sum(p.numel() for p in model.parameters())
    plan = tt.offload_plan(model)
    budget = tierlm.parse_size(args.budget)
    data = torch.randint(0, args.vocab, (args.batch, args.length))
    blocks = tt.find_blocks(model)
    block_bytes = 4 * sum(p.numel() for p in blocks[0].parameters())
    print(
        f"Llama {args.layers}x{args.hidden} vocab {args.vocab}, {n / 1e6:.0f}M params: f32 "
        f"weights + AdamW state {tierlm.format_size(16 * n)}; host budget "
        f"{tierlm.format_size(budget)} (all-host needs {tierlm.format_size(plan['all_host'])}, "
        f"minimum {tierlm.format_size(plan['minimum'])}); batch {args.batch}x{args.length}; "
        f"torch threads {torch.get_num_threads()}; engine {tierlm.io.probe()['chosen']}; "
        f"disk dir {disk_dir}; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    times = {(k, c): [] for k in ("plain", "offload") for c in (False, True)}
    stats = {(k, c): [] for k in ("plain", "offload") for c in (False, True)}
    bandwidths = []
    homes = None
    for _ in range(args.rounds):
        plain = Plain(model, data)
        run_phase(plain, args.steps, times, stats, "plain")
        plain.close()
        del plain
        # The trainer's requests: one block's params (forward, recompute) or moments, up to
        # three reads (m, v, the previous block's params) and three writes (p, m, v) in flight.
        bandwidths.append(engine_bandwidth(disk_dir, block_bytes, 3, 3))
        off = Offload(model, data, budget, disk_dir, args.pipeline_depth)
        run_phase(off, args.steps, times, stats, "offload")
        homes = off.close()
        del off
    rd = statistics.median(b[0] for b in bandwidths)
    wr = statistics.median(b[1] for b in bandwidths)
    on_disk = sum(h == "disk" for h in homes.values())
    pattern = "".join("D" if homes[f"block{i}"] == "disk" else "h" for i in range(len(homes) - 1))
    print(
        f"{on_disk} of {len(homes) - 1} blocks on disk ({pattern}); disk bandwidth (requests of "
        f"{tierlm.format_size(round_up(block_bytes, PAGE))}, 3 in flight, O_DIRECT): read "
        + ", ".join(f"{b[0] / 1e9:.2f}" for b in bandwidths)
        + " GB/s, write "
        + ", ".join(f"{b[1] / 1e9:.2f}" for b in bandwidths)
        + f" GB/s (median {rd / 1e9:.2f} / {wr / 1e9:.2f})"
    )
    header = (
        f"{'configuration':<26} {'step s':>7} {'compute s':>9} {'disk rd':>9} {'disk wr':>9} "
        f"{'I/O bound s':>11} {'io wait s':>9} {'misses':>6} {'opt exp s':>9} {'overlap':>7} "
        f"{'peak/budg':>10} {'x max(compute,IO)':>17} {'cpu s':>6} {'x cpu':>7}"
    )
    print(header)
    print("-" * len(header))
    for kind in ("plain", "offload"):
        for ckpt in (False, True):
            t = statistics.median(times[(kind, ckpt)])
            compute = statistics.median(times[("plain", ckpt)])
            name = f"{'plain torch' if kind == 'plain' else 'offload ' + args.budget}" + (
                " + ckpt" if ckpt else ", no ckpt"
            )
            ss = stats[(kind, ckpt)]
            med = lambda key, ss=ss: statistics.median(s.get(key, 0) for s in ss)  # noqa: E731
            cpu = med("cpu_s")
            cpu_ref = statistics.median(s["cpu_s"] for s in stats[("plain", ckpt)])
            rb, wb = med("disk_read_bytes"), med("disk_write_bytes")
            io_bound = rb / rd + wb / wr
            peak = max(s.get("host_peak", 0) for s in ss)
            print(
                f"{name:<26} {t:7.2f} {compute:9.2f} {tierlm.format_size(int(rb)):>9} "
                f"{tierlm.format_size(int(wb)):>9} {io_bound:11.2f} {med('io_wait_s'):9.2f} "
                f"{med('prefetch_misses'):6.0f} "
                f"{med('optimizer_exposed_s'):9.2f} "
                + (
                    f"{med('overlap'):7.0%} {peak / budget:10.1%}"
                    if kind != "plain"
                    else f"{'':>18}"
                )
                + f" {t / max(compute, io_bound):17.2f} {cpu:6.2f} {cpu / cpu_ref:7.2f}"
            )
    print(
        "cpu s = the process's user + sys CPU seconds in the step (median; less sensitive than "
        "wall time to other processes on a shared machine), x cpu = that / plain torch's"
    )
    print(
        f"compute = median plain torch step (same checkpointing); I/O bound = disk read bytes / "
        f"read bandwidth + write bytes / write bandwidth; peak/budg = host tier peak / budget "
        f"({budget} bytes); per-step times: "
        + "; ".join(
            f"{k}{'+ckpt' if c else ''} " + " ".join(f"{x:.2f}" for x in v)
            for (k, c), v in times.items()
        )
    )
    print(
        f"host tier in/out per step = disk read/write; process max RSS "
        f"{tierlm.format_size(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)} "
        f"(the plain torch phase); load average {os.getloadavg()[0]:.2f}"
    )
    np.random.seed(0)


if __name__ == "__main__":
    main()
