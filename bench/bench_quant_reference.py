"""How far tierlm and llama.cpp each are from the exact computation on one quantized GGUF: both
engines fed llama.cpp's greedy tokens (teacher-forced), their logits at every step against the
f32 forward of the same weights dequantized by transformers (its GGUF loader), and against each
other. This is what bench_quant's --max-logit-error ceiling rests on: on a deep random model the
int8 activation blocks both engines use move the logits by percents, so the two engines differ
from each other by more than either differs from the exact result.

    python bench/bench_quant_reference.py --type q4_0    # bench_quant's 1.1B shape, ~10 min
    python bench/bench_quant_reference.py --type q8_0 --layers 4 --hidden 512 --intermediate 1536 \\
        --heads 8 --kv-heads 2 --vocab 4096                # a small shape (~1 minute)

It reuses bench_quant's files (--dir, built when missing); it times nothing.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _llamacpp  # noqa: E402
import bench_quant  # noqa: E402
import numpy as np  # noqa: E402
from _common import print_table, relative_error  # noqa: E402


def tierlm_logits(pkg, prompt, tokens, kv_dtype, threads):
    import tierlm

    model = tierlm.load(
        pkg, threads=threads, max_context=len(prompt) + len(tokens) + 1, kv_dtype=kv_dtype
    )
    return [model.logits(prompt)] + [model.logits([t], append=True) for t in tokens[:-1]]


def reference_logits(gguf, prompt, tokens):
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(gguf)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens[:-1]])).logits[0].numpy()
    return [logits[len(prompt) - 1 + i] for i in range(len(tokens))]


def main():
    sys.argv += ["--budgets", ""]  # bench_quant's parser: no offload rows here
    if "--type" in sys.argv:
        i = sys.argv.index("--type")
        sys.argv[i] = "--types"
    args = bench_quant.parse_args()
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    files = bench_quant.build_files(args, root)
    prompt, n = bench_quant.PROMPT, args.check_tokens
    rows = []
    for t in args.types:
        gguf, pkg = files[t]
        theirs = []
        llm = _llamacpp.LlamaCpp(gguf, args.threads, n_ctx=len(prompt) + n + 1, repack=False)
        tokens, _ = llm.greedy(prompt, n, logits=theirs)
        del llm
        exact = reference_logits(gguf, prompt, tokens)
        engines = {"llama.cpp": theirs}
        for kv in ("f16", "f32"):
            engines[f"tierlm, {kv} KV"] = tierlm_logits(pkg, prompt, tokens, kv, args.threads)
        for name, logits in engines.items():
            errors = [relative_error(a, b) for a, b in zip(logits, exact, strict=True)]
            rows.append([t, name, "exact f32", f"{max(errors):.2e}", f"{np.mean(errors):.2e}"])
        errors = [
            relative_error(a, b) for a, b in zip(engines["tierlm, f16 KV"], theirs, strict=True)
        ]
        rows.append(
            [t, "tierlm, f16 KV", "llama.cpp", f"{max(errors):.2e}", f"{np.mean(errors):.2e}"]
        )
    print(f"relative L2 logit error over {n} teacher-forced steps (llama.cpp's greedy tokens)")
    print_table(["type", "engine", "against", "max", "mean"], rows)
    print(f"files kept in {root} for bench_quant to reuse; delete it when done")


if __name__ == "__main__":
    main()
