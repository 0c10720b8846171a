"""The `tierlm` command: one subcommand per module in this package.

Errors print as one line (`tierlm: error: ...`); --debug shows the traceback.
"""

import argparse
import sys

from tierlm.cli import bench, chat, demo, export, generate, info, moe, plan, sparse

# Each module adds its subparser and sets `run`.
COMMANDS = [info, export, generate, chat, demo, plan, sparse, moe, bench]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tierlm", description="Run and fine-tune LLMs that do not fit in fast memory."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print("tierlm: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one clear line unless --debug
        if args.debug:
            raise
        print(f"tierlm: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
