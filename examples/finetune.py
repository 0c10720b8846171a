"""Fine-tune a causal LM with tierlm's offload: params + AdamW state beyond the host budget
live on disk, streamed block by block; a tqdm bar shows loss and the step's offload stats.

    python examples/finetune.py --layers 4 --hidden 128 --steps 20 --host-budget 2MiB \\
        --disk-dir /tmp/state

No model or data is downloaded: a Llama-shaped model is built from a config with random
weights and trained to copy a fixed random token sequence (its loss falls quickly).
"""

import argparse
import tempfile

import tierlm
import tierlm.train as tt
import torch
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--host-budget", default=None, help="e.g. 4GiB; default: the minimum")
    ap.add_argument("--disk-dir", default=None, help="default: a temporary directory")
    ap.add_argument("--io-backend", default="auto", choices=["auto", "uring", "threads"])
    ap.add_argument("--save", default=None, help="checkpoint directory to save to at the end")
    ap.add_argument(
        "--device",
        default=None,
        help="compute device, e.g. cuda (blocks copied there for forward and backward); "
        "default: the CPU, in place in the host tier",
    )
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 32),
        max_position_embeddings=max(64, args.length),
    )
    model = LlamaForCausalLM(cfg).float()
    plan = tt.offload_plan(model)
    budget = args.host_budget or plan["minimum"]
    disk_dir = args.disk_dir or tempfile.mkdtemp(prefix="tierlm-finetune-")
    trainer = tt.offload(
        model,
        budget={"host": budget},
        disk_dir=disk_dir,
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        weight_decay=0.0,
        io_backend=args.io_backend,
        device=args.device,
    )
    params = sum(p.numel() for p in model.parameters())
    homes = trainer.homes()
    on_disk = sum(1 for h in homes.values() if h == "disk")
    print(
        f"{params / 1e6:.2f}M params, host budget {tierlm.format_size(tierlm.parse_size(budget))}"
        f" (all-host would need {tierlm.format_size(plan['all_host'])}); {on_disk} of "
        f"{len(homes)} units on disk under {disk_dir}"
    )
    data = torch.randint(0, args.vocab, (args.batch, args.length))
    if trainer.device is not None:
        data = data.to(trainer.device)
    bar = tqdm(range(args.steps), desc="finetune", unit="step")
    first = last = None
    for _ in bar:
        loss = model(input_ids=data, labels=data).loss
        trainer.backward(loss)
        stats = trainer.step()
        trainer.zero_grad()
        last = loss.item()
        first = last if first is None else first
        bar.set_postfix(
            loss=f"{last:.3f}",
            disk=tierlm.format_size(stats["disk_read_bytes"] + stats["disk_write_bytes"]),
            overlap=f"{stats['overlap']:.0%}",
            host_peak=tierlm.format_size(stats["host_peak"]),
        )
    if args.save:
        trainer.save(args.save)
    trainer.close()
    print(
        f"loss {first:.4f} -> {last:.4f}; host peak {stats['host_peak']} <= budget "
        f"{stats['host_budget']}"
    )
    return 0 if last < first else 1


if __name__ == "__main__":
    raise SystemExit(main())
