"""`tierlm demo`: make (once, cached) a small model, export it, generate under a host budget
and print a stats table. The model comes from one function (`MODEL_SOURCE`), so a trained
model can replace the random one without touching the rest."""

import json
import os
import shutil
import sys
import time

from tierlm.sizes import format_size, parse_size

DEMO_PROMPT = "Memory tiers let a small machine run a large model"

# Text the demo tokenizer is trained on: offline, ships with Python.
_TOKENIZER_TEXT_MODULES = ("this", "argparse", "json", "os", "shutil", "textwrap", "zipfile")


def _tokenizer_corpus():
    import importlib
    import inspect

    texts = []
    for name in _TOKENIZER_TEXT_MODULES:
        try:
            module = importlib.import_module(name) if name != "this" else None
        except ImportError:
            continue
        if module is None:
            import codecs
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):  # `import this` prints the Zen
                import this
            texts.append(codecs.decode(this.s, "rot13"))
            continue
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj)
            if doc:
                texts.append(doc)
    return texts


def _train_tokenizer(out_dir, vocab_size):
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(), trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(out_dir)
    return len(tok.get_vocab())


def random_llama_checkpoint(hf_dir):
    """A small Llama (GQA, SwiGLU, RoPE) with random weights and a BPE tokenizer trained on
    Python's docstrings. Writes a Hugging Face checkpoint to hf_dir; returns a description.
    To be replaced by a model the project trains (keep the signature)."""
    import torch
    import transformers

    os.makedirs(hf_dir, exist_ok=True)
    vocab = _train_tokenizer(hf_dir, 1024)
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    transformers.utils.logging.disable_progress_bar()
    model.save_pretrained(hf_dir)
    return "random Llama (4 layers, hidden 256, GQA 8/2), untrained: its text is noise"


# The demo's model: one function writing a Hugging Face checkpoint directory.
MODEL_SOURCE = random_llama_checkpoint


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
    parser.add_argument("--budget", default="64MiB", help="host budget (default 64MiB)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None, help="default ~/.cache/tierlm/demo/...")
    parser.add_argument("--rebuild", action="store_true", help="make the model again")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


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
        ("load", f"{load_seconds * 1000:.0f} ms, read {format_size(total['disk_bytes_read'])}"),
        ("prompt", f"{s['prompt_tokens']} tokens at {s['prefill_tokens_per_s']:.0f} tok/s"),
        ("generated", f"{s['new_tokens']} tokens at {s['decode_tokens_per_s']:.0f} tok/s"),
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
