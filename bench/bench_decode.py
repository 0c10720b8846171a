"""In-memory decode speed of the native executor on a random Llama-shaped model (TinyLlama
1.1B shape by default), f32, f16 and bf16, against transformers' generate and llama.cpp on the
same weights and against the DRAM bound (weight bytes read per token / measured read bandwidth).

    python bench/bench_decode.py [--layers 22] [--threads 2] [--tokens 32] [--runs 3]

The llama.cpp baseline needs two bench-only packages (not tierlm dependencies):

    pip install llama-cpp-python gguf     # builds llama.cpp from source, ~5 minutes

Without them the llama.cpp column prints "-" and the reason is printed. The HF checkpoint is
converted to GGUF by bench/_llamacpp.py (convert_hf_to_gguf.py's Llama layout: Q/K rows
permuted for llama.cpp's rotary pairs). Before timing a dtype, tierlm is checked against each
baseline: fed llama.cpp's greedy tokens it must pick the same tokens (>= 90%) with logits within
5%, and its prompt logits must be within 5% of transformers' (1e-4 in f32); a failed check
prints AGREEMENT FAILED and exits 1.

The checkpoint, packages and GGUF files are made once under ~/.cache/tierlm/bench (~15 GB).
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _llamacpp  # noqa: E402
from _common import memory_bandwidth, print_table, require_close  # noqa: E402

SHAPE = dict(
    vocab_size=32000,
    hidden_size=2048,
    intermediate_size=5632,
    num_attention_heads=32,
    num_key_value_heads=4,
    max_position_embeddings=2048,
)


def checkpoint(root, layers):
    import torch
    import transformers

    hf_dir = os.path.join(root, "hf")
    if os.path.exists(os.path.join(hf_dir, "config.json")):
        return hf_dir
    config = transformers.LlamaConfig(num_hidden_layers=layers, **SHAPE)
    torch.set_default_dtype(torch.bfloat16)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    transformers.utils.logging.disable_progress_bar()
    model.save_pretrained(hf_dir)
    return hf_dir


def package(root, hf_dir, dtype):
    import tierlm

    out = os.path.join(root, f"package-{dtype}")
    if not os.path.exists(os.path.join(out, "manifest.json")):
        tierlm.export(hf_dir, out, dtype=dtype, progress=True)
    return out


def streamed_bytes(pkg):
    """Weight bytes one decode step reads: every tensor but the embedding table (one row)."""
    import json

    manifest = json.load(open(os.path.join(pkg, "manifest.json")))
    tensors = manifest["tensors"]
    total = sum(t["nbytes"] for t in tensors.values())
    embed = tensors["embed.weight"]
    if "lm_head.weight" in tensors:
        total -= embed["nbytes"] - embed["nbytes"] // embed["shape"][0]
    return total


class Tierlm:
    """tierlm's native executor; run() is one generation's decode tokens/s."""

    def __init__(self, pkg, threads, prompt, tokens):
        import tierlm

        self.model = tierlm.load(pkg, budget={"host": "16GiB"}, threads=threads, max_context=256)
        self.prompt, self.tokens = prompt, tokens
        self.model.generate(prompt, max_new_tokens=4, stop_at_eos=False)  # warm up

    def run(self):
        result = self.model.generate(self.prompt, max_new_tokens=self.tokens + 1, stop_at_eos=False)
        return result.stats["decode_tokens_per_s"]


def gguf_file(root, hf_dir, dtype):
    path = os.path.join(root, f"model-{dtype}.gguf")
    if not os.path.exists(path):
        print(f"converting {hf_dir} to {path}", flush=True)
        _llamacpp.convert(hf_dir, path, dtype)
    return path


class LlamaCpp:
    """llama.cpp on the same weights converted to GGUF; run() is one generation's decode
    tokens/s (single-token evals after the prompt's)."""

    def __init__(self, gguf_path, threads, prompt, tokens):
        self.llm = _llamacpp.LlamaCpp(gguf_path, threads)
        self.prompt, self.tokens = prompt, tokens
        self.llm.greedy(prompt, 4)  # warm up (pages the mmapped weights in)

    def run(self):
        _, seconds = self.llm.greedy(self.prompt, self.tokens + 1)
        return self.tokens / seconds


class Transformers:
    """transformers' generate on the HF checkpoint; run() is tokens / (time of tokens + 1
    new tokens - time of 1), i.e. without the prompt's forward."""

    def __init__(self, hf_dir, dtype, threads, prompt, tokens):
        import torch
        import transformers

        torch.set_num_threads(threads)
        torch_dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            hf_dir, dtype=torch_dtype
        ).eval()
        self.ids = torch.tensor([prompt])
        self.mask = torch.ones_like(self.ids)
        self.tokens = tokens
        self._time(2)  # warm up

    def _time(self, n):
        import torch

        t0 = time.perf_counter()
        with torch.no_grad():
            self.model.generate(
                self.ids,
                attention_mask=self.mask,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
            )
        return time.perf_counter() - t0

    def run(self):
        return self.tokens / (self._time(self.tokens + 1) - self._time(1))

    def logits(self):
        """The prompt's last logits (float32 numpy)."""
        import torch

        with torch.no_grad():
            return self.model(self.ids).logits[0, -1].float().numpy()


def interleaved(contenders, runs):
    """Median rate of each contender (None stays None), runs interleaved (a, b, c, a, b, c, ...)
    so that load from other processes on the shared machine hits every contender alike."""
    rates = [[] for _ in contenders]
    for _ in range(runs):
        for c, r in zip(contenders, rates, strict=True):
            if c is not None:
                r.append(c.run())
    return [statistics.median(r) if r else None for r in rates]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtypes", default="bf16,f16,f32")
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--no-llamacpp", action="store_true")
    args = parser.parse_args()
    root = os.path.join(os.path.expanduser("~/.cache/tierlm/bench"), f"decode-l{args.layers}")
    hf_dir = checkpoint(root, args.layers)
    prompt = list(range(100, 116))
    why_no_llamacpp = "--no-llamacpp" if args.no_llamacpp else _llamacpp.missing()
    if why_no_llamacpp:
        print(f"llama.cpp column skipped: {why_no_llamacpp}")
    rows, bandwidths = [], []

    def fmt(x):
        return "-" if x is None else f"{x:.2f}"

    def ratio(a, b):
        return "-" if b is None else f"{a / b:.2f}x"

    for dtype in args.dtypes.split(","):
        pkg = package(root, hf_dir, dtype)
        nbytes = streamed_bytes(pkg)
        gguf = None if why_no_llamacpp else gguf_file(root, hf_dir, dtype)
        ours = Tierlm(pkg, args.threads, prompt, args.tokens)
        cpp = None if gguf is None else LlamaCpp(gguf, args.threads, prompt, args.tokens)
        hf_model = (
            None
            if args.no_transformers
            else Transformers(hf_dir, dtype, args.threads, prompt, args.tokens)
        )
        if cpp is not None:
            what = f"{dtype}: tierlm vs llama.cpp"
            _llamacpp.require_same_as_tierlm(what, ours.model, cpp.llm, prompt, args.tokens)
        if hf_model is not None:
            require_close(
                f"{dtype}: tierlm vs transformers, prompt logits",
                ours.model.logits(prompt),
                hf_model.logits(),
                1e-4 if dtype == "f32" else 5e-2,
            )
        rate, cpp_rate, hf = interleaved([ours, cpp, hf_model], args.runs)
        del ours, cpp, hf_model
        bandwidth = memory_bandwidth(threads=args.threads)["bound"]
        bandwidths.append(bandwidth)
        bound = bandwidth / nbytes
        rows.append(
            (
                f"llama {args.layers}L h2048 {dtype}, {args.threads} threads",
                f"{nbytes / 1e9:.2f} GB",
                f"{rate:.2f}",
                fmt(cpp_rate),
                fmt(hf),
                ratio(rate, cpp_rate),
                ratio(rate, hf),
                f"{bound:.2f}",
                f"{rate / bound:.2f}x",
            )
        )
    print(
        f"decode tokens/s, median of {args.runs} runs of {args.tokens} tokens after a "
        f"16-token prompt, contenders interleaved; DRAM read bandwidth measured after each "
        f"row: {', '.join(f'{b / 1e9:.1f}' for b in bandwidths)} GB/s"
    )
    print_table(
        [
            "configuration",
            "bytes/token",
            "tierlm",
            "llama.cpp",
            "transformers",
            "vs llama.cpp",
            "vs transformers",
            "DRAM bound",
            "of bound",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
