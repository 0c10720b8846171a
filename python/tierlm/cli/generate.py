"""`tierlm generate PKG --prompt TEXT | --ids 1,2,3`: generate with the native executor."""

import importlib.util
import json
import sys

from tierlm.cli.moe_report import print_expert_placement, print_moe
from tierlm.cli.ranges import format_ranges
from tierlm.errors import InvalidArgumentError, UnsupportedError
from tierlm.sizes import format_size


def add_parser(subparsers):
    parser = subparsers.add_parser("generate", help="generate tokens from a package")
    parser.add_argument("package", help="package directory (tierlm export's output)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="prompt text (needs the package's tokenizer)")
    source.add_argument("--ids", help="prompt token ids, comma-separated: 1,2,3")
    parser.add_argument(
        "--chat",
        action="store_true",
        help="the prompt is a user message: apply the package's chat template",
    )
    add_run_options(parser)
    parser.add_argument("--verify", action="store_true", help="check tensor checksums on load")
    parser.add_argument("--no-stop-at-eos", action="store_true", help="ignore eos tokens")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="print the weight placement (resident/streamed) and the KV cache's figures",
    )
    parser.add_argument(
        "--ring-sections", type=int, default=0, help="streaming staging sections (0 = auto)"
    )
    parser.add_argument(
        "--sparse",
        action="store_true",
        help="sparse-neuron flash loading: read only the FFN neurons the predictors pick "
        "(package exported with --sparse, with predictors; ReLU FFNs: exact up to predictor "
        "misses; gated SiLU FFNs (Llama family): LOSSY thresholded sparsity); on a package "
        "calibrated by `tierlm sparse calibrate MODEL --out PKG`, LOSSY input-channel "
        "sparsity of every linear instead",
    )
    parser.add_argument(
        "--sparse-window", type=int, default=4, metavar="K", help="tokens whose neurons stay cached"
    )
    parser.add_argument(
        "--no-bundling",
        action="store_true",
        help="sparse: read each neuron's up and down parts apart, no coalescing (ablation)",
    )
    parser.add_argument(
        "--sparse-capacity",
        type=int,
        default=0,
        metavar="N",
        help="sparse: cached neurons per layer (0 = auto from the predictors)",
    )
    parser.add_argument(
        "--timeline", metavar="PNG", help="plot host-tier usage and I/O over time (matplotlib)"
    )
    parser.set_defaults(run=run)


def add_run_options(parser):
    """Budget, sampling and compute options, shared with `tierlm chat`."""
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="TIER=SIZE",
        help="tier budget, e.g. host=4GiB, or disk=20GiB for the KV blocks --kv-host-budget "
        "moves to disk (repeat for both)",
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0, help="0 = no limit")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="divide the logits of recently seen tokens by this (1 = off; 1.1-1.3 is usual)",
    )
    parser.add_argument(
        "--repetition-last-n",
        type=int,
        default=64,
        help="tokens the repetition penalty looks back at (prompt included; 0 = all)",
    )
    parser.add_argument("--threads", type=int, default=0, help="compute threads (0 = all)")
    parser.add_argument("--max-context", type=int, default=0, help="KV cache tokens")
    parser.add_argument(
        "--kv-dtype",
        default="f16",
        help="KV cache element type: f16 (default), bf16, f32, q8_0 (int8 blocks)",
    )
    parser.add_argument(
        "--kv-policy",
        default="",
        help="full (default); window:S+W: keep S sink tokens and the last W; sirllm:S+W+K[@D]: "
        "and the K of highest token entropy (decay D per token, default 0.999); h2o:S+W+K: and "
        "the K of most attention. Evicting policies run past the context",
    )
    parser.add_argument(
        "--kv-host-budget",
        metavar="SIZE",
        help="host bytes the KV cache may hold (default: all it needs); beyond them its oldest "
        "blocks move to the disk tier and are read back ahead of each layer, every token kept",
    )
    parser.add_argument(
        "--disk-dir",
        metavar="DIR",
        help="directory of the disk tier's scratch file for --kv-host-budget "
        "(default: $TMPDIR, else /tmp)",
    )


def load_options(args):
    """tierlm.load's keyword arguments from the options of add_run_options."""
    return dict(
        budget=parse_budgets(args.budget),
        threads=args.threads,
        max_context=args.max_context,
        kv_dtype=args.kv_dtype,
        kv_policy=args.kv_policy,
        kv_host_budget=args.kv_host_budget,
        disk_dir=args.disk_dir,
    )


def sampling_options(args):
    return dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_at_eos=not getattr(args, "no_stop_at_eos", False),
        repetition_penalty=args.repetition_penalty,
        repetition_last_n=args.repetition_last_n,
    )


def parse_budgets(items):
    budgets = {}
    for item in items:
        tier, sep, size = item.partition("=")
        if not sep or not tier or not size:
            raise InvalidArgumentError(f"--budget {item!r}: write TIER=SIZE, e.g. host=4GiB")
        budgets[tier.strip()] = size.strip()
    return budgets or None


def parse_ids(text):
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part != ""]
    except ValueError as error:
        raise InvalidArgumentError(f"--ids {text!r}: write comma-separated integers") from error


def run(args):
    import tierlm

    if args.timeline and importlib.util.find_spec("matplotlib") is None:
        raise UnsupportedError(
            "--timeline needs matplotlib (pip install 'tierlm[plot]'); "
            "run without --timeline or install it"
        )
    model = tierlm.load(
        args.package,
        **load_options(args),
        verify=args.verify,
        ring_sections=args.ring_sections,
        sparse=args.sparse,
        sparse_window=args.sparse_window,
        sparse_bundled=not args.no_bundling,
        sparse_capacity=args.sparse_capacity,
    )
    if args.verbose:
        print_placement(model, sys.stderr)
    prompt = args.prompt if args.prompt is not None else parse_ids(args.ids)
    if args.chat:
        if args.prompt is None:
            raise InvalidArgumentError("--chat takes the user message as --prompt, not --ids")
        prompt = model.chat_prompt([{"role": "user", "content": args.prompt}])
    options = sampling_options(args)
    if args.json:
        result = model.generate(prompt, **options)
        print(
            json.dumps(
                {
                    "prompt_ids": result.prompt_ids,
                    "output_ids": result.output_ids,
                    "text": result.text,
                    "finish_reason": result.finish_reason,
                    "stats": result.stats,
                    "placement": model.placement(),
                    "model_stats": model.stats(),
                }
            )
        )
        if args.timeline:
            plot_timeline(model, args.timeline)
        return 0
    has_text = model.tokenizer is not None
    for token in model.stream(prompt, **options):
        sys.stdout.write(token.text if has_text else f"{token.id} ")
        sys.stdout.flush()
    sys.stdout.write("\n")
    s = model.stats()
    print(
        f"prefill {s['prefill_tokens']} tokens at {s['prefill_tokens_per_s']:.1f} tok/s, "
        f"decode {s['decode_tokens']} tokens at {s['decode_tokens_per_s']:.1f} tok/s, "
        f"read {format_size(s['disk_bytes_read'])}, host peak {format_size(s['host']['peak'])}",
        file=sys.stderr,
    )
    v = s["verify"]
    if v["enabled"]:
        print(
            f"verified at {v['when']}: {v['tensors']} tensors, {v['bundles']} bundle files, "
            f"{v['predictors']} predictor files ({format_size(v['bytes'])}) in "
            f"{v['seconds']:.2f} s",
            file=sys.stderr,
        )
    if model.placement()["streaming"]:
        print(
            f"streamed {format_size(s['stream_bytes_read'])} "
            f"({format_size(model.placement()['streamed_bytes'])}/token), "
            f"I/O wait {s['io_wait_seconds']:.3f} s, backend {s['io_backend']}"
            f"{' O_DIRECT' if s['io_direct'] else ''}",
            file=sys.stderr,
        )
    if s["sparse"]:
        print_sparse(s, sys.stderr)
    print_moe(s, sys.stderr)
    if args.verbose:
        print_kv(s, sys.stderr)
    if args.timeline:
        plot_timeline(model, args.timeline)
    return 0


def print_sparse(s, out):
    tokens = max(s["sparse_tokens"], 1)
    dense = s["sparse_dense_ffn_bytes"]
    per = s["sparse_bytes_read"] / tokens
    if s["sparse_channels"]:
        print(
            f"input-channel sparsity (LOSSY, target {s['sparse_target_sparsity']:g}, window "
            f"{s['sparse_window']}): {s['sparse_neurons_predicted'] / tokens:.0f} channels "
            f"kept/token, {s['sparse_neurons_read'] / tokens:.0f} columns read/token, "
            f"cache hit rate {100 * s['sparse_cache_hit_rate']:.1f}%, "
            f"{format_size(per)}/token read vs {format_size(dense)} dense "
            f"({100 * per / dense if dense else 0:.1f}%); per token: I/O "
            f"{1e3 * s['sparse_io_seconds'] / tokens:.2f} ms, cache "
            f"{1e3 * s['sparse_memory_seconds'] / tokens:.2f} ms, kernel "
            f"{1e3 * s['sparse_compute_seconds'] / tokens:.2f} ms",
            file=out,
        )
        return
    lossy = (
        f"LOSSY thresholded SiLU, target sparsity {s['sparse_target_sparsity']:g}, "
        if s.get("sparse_lossy")
        else ""
    )
    print(
        f"sparse FFN ({lossy}window {s['sparse_window']}, "
        f"{'bundled' if s['sparse_bundled'] else 'not bundled'}): "
        f"{s['sparse_neurons_predicted'] / tokens:.0f} neurons predicted/token, "
        f"{s['sparse_neurons_read'] / tokens:.0f} read/token, "
        f"cache hit rate {100 * s['sparse_cache_hit_rate']:.1f}%, "
        f"{format_size(per)}/token read vs {format_size(dense)} dense FFN "
        f"({100 * per / dense if dense else 0:.1f}%); per token: predictor "
        f"{1e3 * s['sparse_predictor_seconds'] / tokens:.2f} ms, I/O "
        f"{1e3 * s['sparse_io_seconds'] / tokens:.2f} ms, cache "
        f"{1e3 * s['sparse_memory_seconds'] / tokens:.2f} ms, kernel "
        f"{1e3 * s['sparse_compute_seconds'] / tokens:.2f} ms",
        file=out,
    )


def print_kv(s, out):
    """The KV cache after the run: where its bytes are, what the policy dropped and the
    attention's time per token (every layer's KV append and fused attention)."""
    run = s["prefill_seconds"] + s["decode_seconds"]
    share = f", {100 * s['attention_seconds'] / run:.0f}% of the run" if run > 0 else ""
    print(
        f"KV cache ({s['kv_dtype']}): {s['kv_blocks']} blocks of {s['kv_block_tokens']} tokens, "
        f"{format_size(s['kv_bytes'])} on host, {format_size(s['kv_disk_bytes'])} on disk, "
        f"{s['kv_blocks_spilled']} blocks spilled, {s['kv_slices_read']} layer slices read back, "
        f"{s['kv_evicted']} tokens evicted; "
        f"attention {1e3 * s['attention_seconds_per_token']:.3f} ms/token{share}",
        file=out,
    )


def print_placement(model, out):
    p = model.placement()
    s = model.stats()
    print_expert_placement(model, out)
    if s["sparse"] and s["sparse_channels"]:
        caps = s["sparse_capacity"] or [0]
        print(
            f"input-channel sparsity: {len(s['sparse_capacity'])} sites' matrices not loaded "
            f"({format_size(s['sparse_dense_ffn_bytes'])}); resident columns, channel caches, "
            f"staging and scratch {format_size(s['sparse_host_bytes'])} ({caps.count(0)} sites "
            f"streamed; capacity {min(caps)}..{max(caps)} columns per site, window "
            f"{s['sparse_window']})",
            file=out,
        )
    elif s["sparse"]:
        caps = s["sparse_capacity"]
        print(
            f"sparse FFN: FFN matrices not loaded ({format_size(s['sparse_dense_ffn_bytes'])}); "
            f"neuron caches, staging and predictors {format_size(s['sparse_host_bytes'])} "
            f"(capacity {min(caps)}..{max(caps)} neurons per layer, window "
            f"{s['sparse_window']})",
            file=out,
        )
    if s["disk"]["current"] > 0:  # the extent a spilling KV cache reserves at load
        budget = s["disk"]["budget"]
        print(
            f"KV cache: {format_size(s['kv_bytes'])} in the host tier (blocks and read-back "
            f"staging), the oldest blocks spilled to the disk tier: up to "
            f"{format_size(s['disk']['current'])} (disk budget "
            f"{'no limit' if budget == 2**64 - 1 else format_size(budget)})",
            file=out,
        )
    if not p["streaming"]:
        print(
            f"placement: all {'other ' if p.get('experts') else ''}weights resident in the host "
            "tier "
            f"({format_size(p['resident_bytes'])})",
            file=out,
        )
        return
    print(
        f"placement: resident {format_size(p['resident_bytes'])} "
        f"(embeddings, lm_head, norms, biases: {format_size(p['base_bytes'])}; "
        f"layers {format_ranges(p['resident_layers']) or 'none'}), "
        f"streamed layers {format_ranges(p['streamed_layers'])} "
        f"({format_size(p['streamed_bytes'])} read per token, "
        f"{len(p['streamed_tensors'])} tensors; {len(p['pinned_tensors'])} matrices of "
        "streamed layers kept resident)"
        + (
            f"; rows on demand: {', '.join(p['row_tensors'])} (only the tokens' rows are read)"
            if p["row_tensors"]
            else ""
        ),
        file=out,
    )
    print(
        f"ring: {p['sections']} staging sections x {format_size(p['section_bytes'])} = "
        f"{format_size(p['ring_bytes'])} ({p['chunks']} chunks per token); "
        f"KV cache {format_size(s['kv_bytes'])} {s['kv_dtype']}, "
        f"activations {format_size(s['arena_bytes'])}; host budget "
        f"{format_size(s['host']['budget'])} (minimum {format_size(p['minimum_budget'])})",
        file=out,
    )


def plot_timeline(model, path):
    """Host-tier usage (by part) and streamed bytes / read waits over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = model.stream_events()
    p = model.placement()
    s = model.stats()
    t = ev["t"] or [0.0, s["load_seconds"]]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    mib = 1 << 20
    parts = [
        ("resident weights", p["resident_bytes"]),
        ("staging ring", p["ring_bytes"]),
        ("KV cache", s["kv_bytes"]),
        ("activations", s["arena_bytes"]),
    ]
    level = 0.0
    for name, size in parts:
        top.fill_between([t[0], t[-1]], level / mib, (level + size) / mib, label=name, alpha=0.6)
        level += size
    top.axhline(s["host"]["budget"] / mib, color="k", linestyle="--", label="host budget")
    top.axhline(s["host"]["peak"] / mib, color="r", linestyle=":", label="host peak")
    top.set_ylabel("host tier (MiB)")
    top.legend(loc="lower right", fontsize=7)
    if ev["t"]:
        bottom.plot(ev["t"], [b / mib for b in ev["bytes_read"]], label="streamed (MiB)")
        bottom.set_ylabel("bytes read (MiB)")
        waits = bottom.twinx()
        width = max(ev["t"][-1] - ev["t"][0], 1e-3) / max(len(ev["t"]), 1) * 0.8
        waits.bar(ev["t"], [w * 1e3 for w in ev["wait"]], width=width, color="r", alpha=0.5)
        waits.set_ylabel("read wait per layer (ms)", color="r")
    else:
        bottom.text(0.5, 0.5, "all weights resident: no streaming", ha="center")
    bottom.set_xlabel("seconds since load")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
