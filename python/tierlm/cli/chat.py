"""`tierlm chat PKG`: a conversation on the terminal, each reply streamed; the package's chat
template (tierlm.chat) renders the whole history for every turn."""

import sys

from tierlm.cli.generate import add_run_options, load_options, sampling_options


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "chat", help="chat with a package on the terminal (its chat template applies)"
    )
    parser.add_argument("package", help="package directory (tierlm export's output)")
    parser.add_argument("--system", help="a system message opening the conversation")
    add_run_options(parser)
    parser.set_defaults(run=run)


def run(args, stdin=None, out=None):
    import tierlm

    stdin, out = stdin or sys.stdin, out or sys.stdout
    model = tierlm.load(args.package, **load_options(args))
    messages = [{"role": "system", "content": args.system}] if args.system else []
    interactive = stdin.isatty()
    while True:
        if interactive:
            out.write("> ")
            out.flush()
        line = stdin.readline()
        if not line:
            return 0
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        ids = []
        for token in model.stream(model.chat_prompt(messages), **sampling_options(args)):
            ids.append(token.id)
            out.write(token.text)
            out.flush()
        out.write("\n")
        # the history holds the decoded reply: streamed pieces of a split UTF-8 character differ
        messages.append({"role": "assistant", "content": model.decode(ids)})
