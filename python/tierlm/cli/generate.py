"""`tierlm generate PKG --prompt TEXT | --ids 1,2,3`: generate with the native executor."""

import json
import sys

from tierlm.errors import InvalidArgumentError
from tierlm.sizes import format_size


def add_parser(subparsers):
    parser = subparsers.add_parser("generate", help="generate tokens from a package")
    parser.add_argument("package", help="package directory (tierlm export's output)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="prompt text (needs the package's tokenizer)")
    source.add_argument("--ids", help="prompt token ids, comma-separated: 1,2,3")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="TIER=SIZE",
        help="tier budget, e.g. host=4GiB (repeatable)",
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0, help="0 = no limit")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="compute threads (0 = all)")
    parser.add_argument("--max-context", type=int, default=0, help="KV cache tokens")
    parser.add_argument("--verify", action="store_true", help="check tensor checksums on load")
    parser.add_argument("--no-stop-at-eos", action="store_true", help="ignore eos tokens")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


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

    model = tierlm.load(
        args.package,
        budget=parse_budgets(args.budget),
        threads=args.threads,
        verify=args.verify,
        max_context=args.max_context,
    )
    prompt = args.prompt if args.prompt is not None else parse_ids(args.ids)
    options = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_at_eos=not args.no_stop_at_eos,
    )
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
                }
            )
        )
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
    return 0
