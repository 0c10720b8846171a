"""Claim: offloaded fine-tuning of a model whose f32 weights + AdamW state exceed the host
budget runs within 1.1x of max(compute time, I/O bound), the state living on disk.

    OMP_WAIT_POLICY=passive python bench/bench_finetune.py [--layers 8 --hidden 512
        --budget 160MiB --steps 4]

One table: step time (median) of plain torch (model + torch fused AdamW in RAM: the compute
time), tierlm offload with everything in the host tier, and tierlm offload under the host
budget with the rest on disk; the disk bytes each step moves, the I/O bound (those bytes at
the engine's measured read/write bandwidth) and the ratio to max(compute, I/O bound).
"""

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import tierlm
import tierlm.train as tt
import torch
from transformers import LlamaConfig, LlamaForCausalLM


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
    return LlamaForCausalLM(cfg).float()


def engine_bandwidth(directory, nbytes=256 << 20, block=8 << 20):
    """(read, write) bytes/s of the I/O engine on directory's drive, O_DIRECT, 8 MiB requests."""
    path = os.path.join(directory, "bw.bin")
    tier = tierlm.HostTier(2 * block, lock=False)
    buf = tier.allocate(block).numpy()
    buf[:] = 7
    f = tierlm.io.File(path, "w")
    t0 = time.perf_counter()
    futs = [f.pwrite(buf, off) for off in range(0, nbytes, block)]
    for x in futs:
        x.result()
    f.sync()
    write = nbytes / (time.perf_counter() - t0)
    f.close()
    tierlm.io.drop_cache(path)
    f = tierlm.io.File(path, "r")
    t0 = time.perf_counter()
    for off in range(0, nbytes, block):  # one buffer: sequential batches of reads
        f.pread(buf, off).result()
    read = nbytes / (time.perf_counter() - t0)
    f.close()
    os.unlink(path)
    return read, write


class Plain:
    """Model + torch fused AdamW in RAM, optionally with HF activation checkpointing."""

    def __init__(self, model, data, checkpointing=False):
        if checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        model.config.use_cache = False
        self.model, self.data = model, data
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step(self):
        loss = self.model(input_ids=self.data, labels=self.data).loss
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {}

    def close(self):
        return {}


class Offload:
    def __init__(self, model, data, budget, disk_dir, checkpointing=True):
        self.model, self.data = model, data
        self.trainer = tt.offload(
            model,
            budget={"host": budget},
            disk_dir=disk_dir,
            lr=1e-4,
            weight_decay=0.0,
            checkpoint_activations=checkpointing,
        )

    def step(self):
        loss = self.model(input_ids=self.data, labels=self.data).loss
        self.trainer.backward(loss)
        stats = self.trainer.step()
        self.trainer.zero_grad()
        return stats

    def close(self):
        on_disk = sum(h == "disk" for h in self.trainer.homes().values())
        self.trainer.close(restore=False)
        return {"on_disk": on_disk}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4, help="measured steps (after 1 warm-up)")
    ap.add_argument("--budget", default="160MiB")
    ap.add_argument("--disk-dir", default=None)
    args = ap.parse_args(argv)
    disk_dir = args.disk_dir or tempfile.mkdtemp(prefix="tierlm-bench-")
    model = build(args)
    n = sum(p.numel() for p in model.parameters())
    plan = tt.offload_plan(model)
    budget = tierlm.parse_size(args.budget)
    data = torch.randint(0, args.vocab, (args.batch, args.length))
    rd, wr = engine_bandwidth(disk_dir)
    print(
        f"Llama {args.layers}x{args.hidden}, {n / 1e6:.1f}M params: f32 weights + AdamW "
        f"state {tierlm.format_size(16 * n)}; host budget {tierlm.format_size(budget)} "
        f"(all-host needs {tierlm.format_size(plan['all_host'])}); batch {args.batch}x"
        f"{args.length}; torch threads {torch.get_num_threads()}; engine "
        f"{tierlm.io.probe()['chosen']}: read {rd / 1e9:.2f} GB/s, write {wr / 1e9:.2f} GB/s"
    )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    del model

    def fresh():
        m = build(args)
        m.load_state_dict(state)
        return m

    configs = [
        ("plain torch (fits in RAM)", lambda: Plain(fresh(), data)),
        ("plain torch + ckpt", lambda: Plain(fresh(), data, checkpointing=True)),
        (
            "offload all-host, no ckpt",
            lambda: Offload(fresh(), data, plan["all_host"], disk_dir, checkpointing=False),
        ),
        ("offload all-host + ckpt", lambda: Offload(fresh(), data, plan["all_host"], disk_dir)),
        (
            f"offload {args.budget}, no ckpt",
            lambda: Offload(fresh(), data, budget, disk_dir, checkpointing=False),
        ),
        (f"offload {args.budget} + ckpt", lambda: Offload(fresh(), data, budget, disk_dir)),
    ]
    runners = [(name, make()) for name, make in configs]
    times = {name: [] for name, _ in runners}
    stats = {}
    # Round-robin: one step of each configuration in turn, so load from other processes on a
    # shared machine falls on all of them alike. The first round is a warm-up.
    for round_ in range(args.steps + 1):
        for name, runner in runners:
            t0 = time.perf_counter()
            stats[name] = runner.step()
            if round_ > 0:
                times[name].append(time.perf_counter() - t0)
    rows = []
    for name, runner in runners:
        runner.close()
        rows.append((name, statistics.median(times[name]), {"stats": stats[name]}))
    computes = {False: rows[0][1], True: rows[1][1]}  # plain torch without / with ckpt
    print(
        f"{'configuration':<30} {'step s':>7} {'disk rd':>9} {'disk wr':>9} {'I/O bound s':>11} "
        f"{'overlap':>7} {'host peak':>10} {'x max(compute,IO)':>17}"
    )
    for name, t, info in rows:
        compute = computes[name.endswith("+ ckpt")]
        s = info.get("stats", {})
        rb, wb = s.get("disk_read_bytes", 0), s.get("disk_write_bytes", 0)
        io_bound = rb / rd + wb / wr
        ref = max(compute, io_bound)
        print(
            f"{name:<30} {t:7.3f} {tierlm.format_size(rb):>9} {tierlm.format_size(wb):>9} "
            f"{io_bound:11.3f} {s.get('overlap', float('nan')):7.0%} "
            f"{tierlm.format_size(s.get('host_peak', 0)):>10} {t / ref:17.2f}"
        )
    print(
        "compute = the plain torch step with the same activation checkpointing setting; "
        "I/O bound = disk bytes / engine bandwidth (read, write)"
    )
    np.random.seed(0)


if __name__ == "__main__":
    main()
