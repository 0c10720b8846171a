"""`tierlm moe profile PKG`: the usage profile of a mixture-of-experts package (the tokens of a
calibration text routed to each expert of each moe layer), written to PKG/expert_usage.json; at
load the expert store homes the most used experts on the host tier by it."""

import json
import os

from tierlm.cli.generate import parse_budgets, parse_ids
from tierlm.cli.sparse import _read_text
from tierlm.package_format import EXPERT_USAGE

SHOWN = 3  # most used experts printed per layer


def add_parser(subparsers):
    parser = subparsers.add_parser("moe", help="mixture-of-experts tools: profile expert usage")
    sub = parser.add_subparsers(dest="moe_command", required=True, metavar="SUBCOMMAND")
    profile = sub.add_parser(
        "profile",
        help="count the tokens routed to each expert (expert_usage.json)",
        description="Run a calibration text (default: the one tierlm ships) through the "
        "package's model and write the tokens routed to each expert of each moe layer to "
        f"PACKAGE/{EXPERT_USAGE}, replacing an earlier profile. `tierlm generate` and "
        "tierlm.load then home the most used experts on the host tier.",
    )
    profile.add_argument("package", help="tierlm package of a mixture-of-experts model")
    source = profile.add_mutually_exclusive_group()
    source.add_argument("--text", metavar="FILE", help="calibration text file")
    source.add_argument("--ids", help="calibration token ids, comma-separated: 1,2,3")
    profile.add_argument(
        "--max-tokens", type=int, default=512, help="tokens run at most (and the model's context)"
    )
    profile.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="TIER=SIZE",
        help="tier budget while profiling, e.g. host=4GiB, for a model larger than memory",
    )
    profile.add_argument("--json", action="store_true", help="print the profile as JSON")
    profile.set_defaults(run=run_profile)


def run_profile(args):
    from tierlm.expert_usage import profile_experts

    text = _read_text(args.text, "calibration") if args.text else None
    ids = parse_ids(args.ids) if args.ids is not None else None
    profile = profile_experts(
        args.package,
        text=text,
        ids=ids,
        max_tokens=args.max_tokens,
        budget=parse_budgets(args.budget),
    )
    if args.json:
        print(json.dumps(profile, indent=1))
        return
    path = os.path.join(args.package, EXPERT_USAGE)
    print(f"profiled {profile['tokens']} tokens ({profile['source']}) into {path}")
    for layer in profile["layers"]:
        counts = layer["tokens_per_expert"]
        total = max(1, sum(counts))
        top = sorted(range(len(counts)), key=lambda e: -counts[e])[:SHOWN]
        shares = ", ".join(f"{e} {100 * counts[e] / total:.0f}%" for e in top)
        print(f"  layer {layer['layer']}: most used experts {shares}")
