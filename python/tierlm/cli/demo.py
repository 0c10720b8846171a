"""`tierlm demo`: make (once, cached) a small model, export it, generate under a host budget
and print a stats table. The model comes from one function (`MODEL_SOURCE`), so a trained
model can replace the random one without touching the rest."""

import json
import os
import shutil
import sys
import time

from tierlm.sizes import format_size, parse_size

DEMO_PROMPT = "class Parser:\n    def __init__(self"

# Checkpoint files copied from the shipped model (predictors and notes stay behind).
_CHECKPOINT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)


def trained_opt_checkpoint(hf_dir):
    """The OPT model (ReLU FFN, 6.4 M parameters) that scripts/train_demo_model.py trained on
    the Python standard library, shipped with tierlm. Writes a Hugging Face checkpoint to
    hf_dir; returns a description."""
    from tierlm.sparse import DEMO_MODEL_DIR

    os.makedirs(hf_dir, exist_ok=True)
    for name in _CHECKPOINT_FILES:
        shutil.copy(DEMO_MODEL_DIR / name, os.path.join(hf_dir, name))
    return "OPT, 6 layers, hidden 256, trained on the Python standard library (f16)"


# The demo's model: one function writing a Hugging Face checkpoint directory.
MODEL_SOURCE = trained_opt_checkpoint


def cache_root():
    base = os.environ.get("TIERLM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tierlm"
    )
    return os.path.join(base, "demo", MODEL_SOURCE.__name__)


def prepare(root, rebuild=False, log=print):
    """Returns (package dir, description), building the checkpoint and package once."""
    import tierlm

    done = os.path.join(root, "ready.json")
    if rebuild and os.path.exists(root):
        shutil.rmtree(root)
    if os.path.exists(done):
        with open(done) as f:
            return os.path.join(root, "package"), json.load(f)["description"]
    os.makedirs(root, exist_ok=True)
    hf_dir = os.path.join(root, "hf")
    pkg = os.path.join(root, "package")
    for path in (hf_dir, pkg):
        shutil.rmtree(path, ignore_errors=True)
    log(f"making the demo model in {root} (once)")
    description = MODEL_SOURCE(hf_dir)
    tierlm.export(hf_dir, pkg, progress=sys.stderr.isatty())
    with open(done, "w") as f:
        json.dump({"description": description}, f)
    return pkg, description


def add_parser(subparsers):
    parser = subparsers.add_parser("demo", help="export a small model and generate with a budget")
    parser.add_argument("--prompt", default=DEMO_PROMPT)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument(
        "--budget",
        default="14MiB",
        help="host budget (default 14MiB: less than weights + KV cache, so layers stream)",
    )
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None, help="default ~/.cache/tierlm/demo/...")
    parser.add_argument("--rebuild", action="store_true", help="make the model again")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def _placement_text(model):
    p = model.placement()
    if not p["streaming"]:
        return "every weight resident in the host tier"
    return (
        f"layers {p['resident_layers']} resident, {p['streamed_layers']} streamed through "
        f"{p['sections']} ring sections of {format_size(p['section_bytes'])}"
    )


def _disk_text(stats):
    if not stats.get("streaming"):
        return f"{format_size(stats['disk_bytes_read'])} (weights read once at load)"
    return (
        f"{format_size(stats['bytes_read_per_token'])} per token, O_DIRECT via "
        f"{stats['io_backend']}, I/O overlapped with compute {stats['overlap_pct']:.0f}%"
    )


def run(args):
    import tierlm

    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    pkg, description = prepare(args.cache_dir or cache_root(), args.rebuild, log)
    budget = parse_size(args.budget, "--budget")
    t0 = time.perf_counter()
    model = tierlm.load(pkg, budget={"host": budget})
    load_seconds = time.perf_counter() - t0
    result = model.generate(
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
    )
    s, total = result.stats, model.stats()
    weights = sum(
        os.path.getsize(os.path.join(pkg, f)) for f in os.listdir(pkg) if f.endswith(".bin")
    )
    rows = [
        ("model", description),
        ("package", f"{pkg} ({format_size(weights)} of weights, {model.dtype})"),
        ("host budget", format_size(budget)),
        ("load", f"{load_seconds * 1000:.0f} ms"),
        ("placement", _placement_text(model)),
        ("prompt", f"{s['prompt_tokens']} tokens at {s['prefill_tokens_per_s']:.0f} tok/s"),
        ("generated", f"{s['new_tokens']} tokens at {s['decode_tokens_per_s']:.0f} tok/s"),
        ("disk reads", _disk_text(s)),
        (
            "host peak",
            f"{format_size(total['host']['peak'])} of {format_size(budget)} "
            f"(weights {format_size(total['weight_bytes'])}, KV {format_size(total['kv_bytes'])}, "
            f"activations {format_size(total['arena_bytes'])})",
        ),
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "package": pkg,
                    "prompt": args.prompt,
                    "prompt_ids": result.prompt_ids,
                    "output_ids": result.output_ids,
                    "text": result.text,
                    "stats": s,
                    "host_budget": budget,
                    "host_peak": total["host"]["peak"],
                }
            )
        )
        return 0
    print(f"\n{args.prompt}{result.text}\n")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0
