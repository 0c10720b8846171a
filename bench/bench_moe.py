"""Mixture-of-experts decode with experts across the tiers: tierlm's expert store (cache +
layer-ahead prefetch, and without prefetch) against accelerate's disk offload of the same
checkpoint, at host budgets that hold 50% and 25% of the expert bytes besides the rest.

The model is a random Mixtral-shaped checkpoint (bf16) whose routers are biased so that
expert use follows a Zipf-like skew, as trained routers' does. THE SKEW IS SYNTHETIC: hidden
dimension 0 of the embeddings is a constant, and router row e reads it with weight
-zipf * ln(e + 1), so expert e's logit is lowered by about that much on every token; the
top-2 share printed below is measured with transformers on the prompt.
Cold for every method: before each decode step the method's files are dropped from the page
cache (bench/offload_baselines.py); tierlm reads experts with O_DIRECT.
Columns: decode s/token (median), bytes read from disk per token (/proc/self/io), expert hit
rate and prediction accuracy (tierlm), the disk bound of those bytes at fio's random-read
bandwidth (8 MiB blocks, QD 32, O_DIRECT, before and after each row), ratios vs tierlm.

    python bench/bench_moe.py [--layers 8] [--hidden 1024] [--intermediate 1792] [--experts 8]
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import offload_baselines as ob  # noqa: E402
import tierlm  # noqa: E402
from _common import require_same_tokens  # noqa: E402
from bench_offload import tierlm_decode  # noqa: E402


def make_skewed_mixtral(out_dir, args):
    """Writes the random Mixtral checkpoint (once); returns the top-2 share of routing."""
    import torch
    import transformers

    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / "config.json").exists():
        return json.loads((out_dir / "skew.json").read_text())["top2_share"]
    config = transformers.MixtralConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=16,
        num_key_value_heads=4,
        num_local_experts=args.experts,
        num_experts_per_tok=2,
        max_position_embeddings=512,
        experts_implementation="eager",
    )
    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(config).to(torch.bfloat16).eval()
    ranks = torch.arange(args.experts, dtype=torch.float32)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0  # a constant the residual stream carries
        for layer in model.model.layers:
            block = layer.mlp if hasattr(layer, "mlp") else layer.block_sparse_moe
            router = block.gate.weight
            # rmsnorm scales the constant to about sqrt(hidden): the bias is -zipf ln(rank+1)
            router[:, 0] = (-args.zipf * torch.log1p(ranks) / args.hidden**0.5).to(router.dtype)
        ids = torch.tensor([prompt_ids(args)])
        logits = model(ids, output_router_logits=True).router_logits
    counts = torch.zeros(args.experts)
    for layer_logits in logits:
        chosen = layer_logits.float().topk(2).indices.flatten()
        counts += torch.bincount(chosen, minlength=args.experts)
    share = float(counts.sort(descending=True).values[:2].sum() / counts.sum())
    model.save_pretrained(out_dir)
    (out_dir / "skew.json").write_text(json.dumps({"top2_share": share}))
    return share


def prompt_ids(args):
    return [(7 * i + 3) % args.vocab for i in range(args.prompt)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/tierlm-bench-moe")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--intermediate", type=int, default=1792)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--zipf", type=float, default=1.5, help="router bias per ln(rank+1)")
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=9, help="decode steps = this - 1")
    parser.add_argument("--budgets", default="0.5,0.25", help="shares of the expert bytes")
    parser.add_argument("--skip", default="", help="comma list: accelerate")
    parser.add_argument("--fio-seconds", type=int, default=3)
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=0.5,
        help="floor: leading greedy tokens of accelerate equal to tierlm's, as a fraction",
    )
    args = parser.parse_args()

    root = Path(args.dir)
    hf, pkg = root / "hf", root / "pkg"
    top2 = make_skewed_mixtral(hf, args)
    if not (pkg / "manifest.json").exists():
        tierlm.export(str(hf), str(pkg), dtype="bf16", progress=False)
    hf_files = [str(p) for p in hf.glob("*.safetensors")]
    pkg_files = [str(p) for p in pkg.glob("*.bin")]
    biggest = max(pkg_files, key=os.path.getsize)
    ids = prompt_ids(args)
    full = tierlm.load(str(pkg), max_context=len(ids) + args.new_tokens)
    s, experts = full.stats(), full.placement()["experts"]
    expert_bytes = experts["host_bytes"] + experts["router_bytes"]
    others = s["weight_bytes"] - expert_bytes + s["kv_bytes"] + s["arena_bytes"]
    del full

    def fio():
        return ob.fio_read_bandwidth(biggest, block="8M", depth=32, seconds=args.fio_seconds)

    methods = [
        ("tierlm cache+prefetch", {"expert_prefetch": True}),
        ("tierlm cache, no prefetch", {"expert_prefetch": False}),
        ("tierlm lfu cache+prefetch", {"expert_prefetch": True, "expert_cache": "lfu"}),
    ]
    rows, reference_ids = [], None
    for frac in [float(f) for f in args.budgets.split(",")]:
        budget = others + int(expert_bytes * frac)
        for name, options in methods:
            bw0 = fio()
            steps, out_ids, info = tierlm_decode(
                str(pkg), budget, ids, args.new_tokens, pkg_files, **options
            )
            reference_ids = reference_ids or out_ids
            require_same_tokens(f"{name} at {frac:.0%} vs the first row", out_ids, reference_ids, 1)
            st = info["stats"]
            note = (
                f"hit {st['moe_hit_rate_pct']:.0f}%, predicted "
                f"{st['moe_prediction_accuracy_pct']:.0f}%, "
                f"{st['moe_experts_per_token']:.1f} experts/token, peak "
                f"{info['peak'] / 2**20:.0f} MiB of {budget / 2**20:.0f}"
            )
            rows.append((name, frac, steps, note, [bw0, fio()]))
        if "accelerate" not in set(args.skip.split(",")):
            bw0 = fio()
            steps, offloaded, hf_ids = ob.accelerate_decode(
                str(hf), budget, root / f"accelerate-{frac}", ids, args.new_tokens, hf_files
            )
            require_same_tokens(
                f"accelerate at {frac:.0%} vs tierlm",
                hf_ids[: len(reference_ids)],
                reference_ids,
                args.min_agreement,
            )
            note = f"{len(offloaded)} offload files"
            rows.append(("accelerate disk offload", frac, steps, note, [bw0, fio()]))

    bws = [b for row in rows for b in row[4] if b]
    print(
        f"\nmodel: random Mixtral-shaped bf16, hidden {args.hidden}, {args.layers} layers, "
        f"{args.experts} experts x ffn {args.intermediate}, top-2, vocab {args.vocab}: "
        f"experts {expert_bytes / 1e9:.2f} GB, the rest {others / 1e9:.2f} GB (weights, KV, "
        f"activations); SYNTHETIC Zipf-like routing (zipf {args.zipf}): the two most used "
        f"experts take {100 * top2:.0f}% of the prompt's routing (uniform: "
        f"{200 / args.experts:.0f}%); prompt {args.prompt}, {args.new_tokens - 1} decode steps "
        "(median), page cache dropped before every step; fio 8 MiB randread QD32 O_DIRECT: "
        + (f"{min(bws) / 1e9:.2f}-{max(bws) / 1e9:.2f} GB/s" if bws else "unavailable")
    )
    header = (
        f"{'method':<26} {'budget':>6} {'s/token':>8} {'tok/s':>7} {'MB/token':>9} "
        f"{'bound s':>8} {'bound/t':>8} {'x tierlm':>8}  notes"
    )
    print(header)
    print("-" * len(header))
    base = {r[1]: ob.median([s[0] for s in r[2]]) for r in rows if r[0] == methods[0][0]}
    for name, frac, steps, note, row_bws in rows:
        t = ob.median([s[0] for s in steps])
        b = ob.median([s[1] for s in steps])
        bw = sum(x for x in row_bws if x) / max(len([x for x in row_bws if x]), 1) or None
        bound = b / bw if bw else float("nan")
        print(
            f"{name:<26} {int(frac * 100):>5}% {t:>8.3f} {1 / t if t else 0:>7.2f} "
            f"{b / 1e6:>9.1f} {bound:>8.3f} {bound / t if t else float('nan'):>8.2f} "
            f"{t / base[frac]:>8.2f}  {note}"
        )
    print(
        "budget: share of the expert bytes the host budget holds besides the rest; bound s: "
        "MB/token / fio GB/s; bound/t: at the disk bound = 1.0; x tierlm: s/token / tierlm "
        "cache+prefetch's at the same budget. Not measured: llama.cpp with mmap (tierlm "
        "exports no MoE GGUF yet) and tierlm's dense offload of every expert."
    )


if __name__ == "__main__":
    main()
