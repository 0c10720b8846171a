"""Every option of every `tierlm` command acts or is refused. The options are enumerated from the
argparse parser itself, so an option added without a case in CASES fails
test_every_cli_option_has_a_case; each case runs the command and checks what the option changes
(or that a bad value is refused with a message naming it)."""

import argparse
import io
import json
import os
import shutil
import subprocess
import sys

import cli_option_cases
import pytest
import tierlm
from models import SPILL_SHAPE, flipped_copy, hf_checkpoint, package
from tierlm import _core
from tierlm.cli import build_parser, main

DEMO = os.path.join(os.path.dirname(tierlm.__file__), "data", "demo-opt")


def cli_options():
    """'command [subcommand] option' for every argument of every command (positionals by
    their dest, options by their first flag)."""
    keys = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif not isinstance(action, argparse._HelpAction):
                flag = action.option_strings[0] if action.option_strings else action.dest
                keys.append(" ".join([*path, flag]))

    walk(build_parser(), [])
    return keys


class Ctx:
    """What the cases share: packages, a checkpoint, a scratch dir and captured output."""

    def __init__(self, root, capsys):
        self.root, self.capsys = root, capsys

    def run(self, *argv):
        """(exit code, stdout, stderr) of `tierlm argv`."""
        self.capsys.readouterr()
        rc = main([str(a) for a in argv])
        out = self.capsys.readouterr()
        return rc, out.out, out.err

    def json(self, *argv):
        rc, out, err = self.run(*argv, "--json")
        assert rc == 0, err
        return json.loads(out)

    def fails(self, *argv, match):
        rc, _, err = self.run(*argv)
        assert rc == 1 and match in err, err
        return err

    def chat(self, *argv, stdin="tiered memory\n"):
        """(exit code, replies, stderr) of `tierlm chat argv` reading the user's lines from
        stdin."""
        saved, sys.stdin = sys.stdin, io.StringIO(stdin)
        try:
            rc, out, err = self.run("chat", *argv)
        finally:
            sys.stdin = saved
        return rc, out.split("\n")[:-1], err

    def chat_fails(self, *argv, match):
        rc, _, err = self.chat(*argv)
        assert rc == 1 and match in err, err
        return err


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-options")
    _, pkg = package("llama", str(root), seed=7)
    _, hf = hf_checkpoint("opt", root / "hf-opt", tokenizer=True, vocab_size=320)
    return {"root": root, "pkg": pkg, "hf": hf}


CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def chat_pkg(shared):
    """A llama package whose tokenizer carries a ChatML template, for `chat` and --chat."""
    # vocabulary 300: the tokenizer's bytes and merges all have rows in the embedding
    _, hf = hf_checkpoint("llama", shared["root"] / "hf-chat", tokenizer=True, vocab_size=300)
    path = os.path.join(hf, "tokenizer_config.json")
    with open(path) as f:
        config = json.load(f)
    config["chat_template"] = CHATML
    with open(path, "w") as f:
        json.dump(config, f)
    return tierlm.export(hf, shared["root"] / "chat-pkg", progress=False)


@pytest.fixture(scope="module")
def sparse_pkg(shared):
    if not os.path.exists(os.path.join(DEMO, "predictors.json")):
        pytest.skip("demo model not shipped")
    out = str(shared["root"] / "demo-sparse")
    tierlm.export(DEMO, out, progress=False, sparse=True)
    return out


IDS = "5,7,11,13"


def gen(ctx, *argv):
    return ctx.json("generate", ctx.pkg, "--ids", IDS, "--no-stop-at-eos", *argv)


def python_generate(ctx, **kw):
    ids = [int(i) for i in IDS.split(",")]
    return tierlm.load(ctx.pkg).generate(ids, stop_at_eos=False, **kw).output_ids


def streaming_host(ctx):
    """Just below what the resident model needs: its layers stream."""
    return tierlm.load(ctx.pkg, budget="1GiB").stats()["host"]["peak"] - (64 << 10)


def case_debug(ctx):
    ctx.fails("generate", "/nonexistent/pkg", "--ids", "1", match="/nonexistent/pkg")
    with pytest.raises(FileNotFoundError):  # the traceback, not one line
        main(["--debug", "generate", "/nonexistent/pkg", "--ids", "1"])


def case_generate_package(ctx):
    ctx.fails("generate", os.path.join(ctx.tmp, "missing"), "--ids", "1", match="missing")
    assert gen(ctx)["output_ids"] == python_generate(ctx, max_new_tokens=32)


def case_generate_prompt(ctx):
    ctx.fails("generate", ctx.pkg, "--prompt", "hello", match="no tokenizer")
    out = ctx.json("generate", ctx.sparse_pkg, "--prompt", "def f(", "--max-new-tokens", "3")
    assert out["prompt_ids"] == tierlm.load(ctx.sparse_pkg).encode("def f(")
    assert isinstance(out["text"], str)


def case_generate_ids(ctx):
    assert gen(ctx, "--max-new-tokens", "1")["prompt_ids"] == [5, 7, 11, 13]
    ctx.fails("generate", ctx.pkg, "--ids", "1,x", match="comma-separated")
    ctx.fails("generate", ctx.pkg, "--ids", str(2**31), match="token id = 2147483648")


def case_generate_max_new_tokens(ctx):
    assert len(gen(ctx, "--max-new-tokens", "3")["output_ids"]) == 3
    ctx.fails("generate", ctx.pkg, "--ids", IDS, "--max-new-tokens", "-1", match="max_new_tokens")


def case_generate_budget(ctx):
    out = gen(ctx, "--budget", "host=48MiB", "--max-new-tokens", "2")
    assert out["model_stats"]["host"]["budget"] == 48 << 20
    ctx.fails("generate", ctx.pkg, "--ids", IDS, "--budget", "device=1GiB", match="device")
    # disk: the tier --kv-host-budget spills to (case_generate_kv_host_budget)
    ctx.fails("generate", ctx.pkg, "--ids", IDS, "--budget", "disk=1GiB", match="kv_host_budget")
    ctx.fails("generate", ctx.pkg, "--ids", IDS, "--budget", "host", match="TIER=SIZE")


def case_generate_temperature(ctx):
    hot = gen(ctx, "--temperature", "5", "--seed", "3", "--max-new-tokens", "12")["output_ids"]
    assert hot == python_generate(ctx, max_new_tokens=12, temperature=5.0, seed=3)
    assert hot != python_generate(ctx, max_new_tokens=12)
    ctx.fails("generate", ctx.pkg, "--ids", IDS, "--temperature", "-1", match="temperature")


def case_generate_top_k(ctx):
    out = gen(ctx, "--temperature", "5", "--top-k", "1", "--max-new-tokens", "12")["output_ids"]
    assert out == python_generate(ctx, max_new_tokens=12)
    ctx.fails("generate", ctx.pkg, "--ids", IDS, "--top-k", "-2", match="top_k = -2")


def case_generate_top_p(ctx):
    out = gen(ctx, "--temperature", "5", "--top-p", "1e-6", "--max-new-tokens", "12")
    assert out["output_ids"] == python_generate(ctx, max_new_tokens=12)
    ctx.fails("generate", ctx.pkg, "--ids", IDS, "--top-p", "0", match="top_p")


def case_generate_repetition_penalty(ctx):
    out = gen(ctx, "--repetition-penalty", "50", "--max-new-tokens", "12")["output_ids"]
    assert out == python_generate(ctx, max_new_tokens=12, repetition_penalty=50.0)
    assert out != python_generate(ctx, max_new_tokens=12)
    ctx.fails("generate", ctx.pkg, "--ids", IDS, "--repetition-penalty", "0", match="repetition")


def case_generate_repetition_last_n(ctx):
    argv = ("--repetition-penalty", "50", "--max-new-tokens", "12", "--repetition-last-n")
    out = gen(ctx, *argv, "1")["output_ids"]
    assert out == python_generate(
        ctx, max_new_tokens=12, repetition_penalty=50.0, repetition_last_n=1
    )
    assert out != gen(ctx, *argv, "0")["output_ids"]
    ctx.fails("generate", ctx.pkg, "--ids", IDS, "--repetition-last-n", "-1", match="last_n = -1")


def case_generate_seed(ctx):
    a = gen(ctx, "--temperature", "5", "--seed", "1", "--max-new-tokens", "12")["output_ids"]
    b = gen(ctx, "--temperature", "5", "--seed", "2", "--max-new-tokens", "12")["output_ids"]
    assert a != b
    ctx.fails("generate", ctx.pkg, "--ids", IDS, "--seed", "-1", match="seed = -1")


def case_generate_threads(ctx):
    before = _core.cpu_info()["threads"]
    try:
        gen(ctx, "--threads", "2", "--max-new-tokens", "1")
        assert _core.cpu_info()["threads"] == 2
        ctx.fails("generate", ctx.pkg, "--ids", IDS, "--threads", "1000000", match="0..1024")
    finally:
        _core.set_threads(before)


def case_generate_max_context(ctx):
    gen(ctx, "--max-context", "8", "--max-new-tokens", "2")
    ctx.fails("generate", ctx.pkg, "--ids", "1,2,3,4,5,6,7,8,9", "--max-context", "8", match="8")
    ctx.fails("generate", ctx.pkg, "--ids", IDS, "--max-context", "-1", match="max_context")


def case_generate_kv_dtype(ctx):
    default = gen(ctx, "--max-new-tokens", "2")["model_stats"]
    q8 = gen(ctx, "--max-new-tokens", "2", "--kv-dtype", "q8_0")["model_stats"]
    assert (default["kv_dtype"], q8["kv_dtype"]) == ("f16", "q8_0")
    assert q8["kv_block_bytes"] < default["kv_block_bytes"]
    ctx.fails("generate", ctx.pkg, "--ids", IDS, "--kv-dtype", "q4_0", match="kv_dtype q4_0")


def case_generate_kv_policy(ctx):
    for policy in ("window:4+124", "sirllm:4+60+64@0.99", "h2o:4+60+64"):
        out = gen(ctx, "--max-new-tokens", "300", "--kv-policy", policy)
        assert len(out["output_ids"]) == 300 and out["model_stats"]["kv_evicted"] > 0
    for bad in ("window:x", "sirllm:4+60+64@2", "h2o:4+60"):
        ctx.fails("generate", ctx.pkg, "--ids", IDS, "--kv-policy", bad, match=f"kv_policy '{bad}'")


def spill_package(ctx):
    """A llama whose KV cache spills at 40 % of its bytes (models.SPILL_SHAPE)."""
    return package("llama", ctx.tmp, seed=7, **SPILL_SHAPE)[1]


def case_generate_kv_host_budget(ctx):
    pkg = spill_package(ctx)
    share = tierlm.load(pkg).stats()["kv_bytes"] * 2 // 5
    argv = ("generate", pkg, "--ids", IDS, "--no-stop-at-eos", "--max-new-tokens", "100")
    plain = ctx.json(*argv)
    spilled = ctx.json(*argv, "--kv-host-budget", str(share), "--budget", "disk=8MiB")
    assert spilled["output_ids"] == plain["output_ids"]
    s = spilled["model_stats"]
    assert s["kv_blocks_spilled"] > 0 and s["kv_bytes"] <= share
    assert 0 < s["disk"]["peak"] <= s["disk"]["budget"] == 8 << 20
    # with --kv-policy: the policy evicts from the spilled cache, the tokens those in memory
    windowed = (*argv[:-1], "300", "--kv-policy", "window:4+252")
    in_memory = ctx.json(*windowed)
    half = str(in_memory["model_stats"]["kv_bytes"] // 2)
    both = ctx.json(*windowed, "--kv-host-budget", half)
    assert both["output_ids"] == in_memory["output_ids"]
    s = both["model_stats"]
    assert s["kv_evicted"] == in_memory["model_stats"]["kv_evicted"] > 0
    assert s["kv_blocks_spilled"] > 0 and s["kv_bytes"] <= int(half)
    rc, _, err = ctx.run(*argv, "--kv-host-budget", str(share), "--verbose")
    assert rc == 0 and "oldest blocks spilled to the disk tier" in err and "no limit" in err, err
    ctx.fails(*argv, "--kv-host-budget", "64KiB", match="kv_host_budget 64.0 KiB cannot hold")
    ctx.fails(*argv, "--kv-host-budget", "lots", match="kv_host_budget: cannot read 'lots'")


def case_generate_disk_dir(ctx):
    pkg = spill_package(ctx)
    share = str(tierlm.load(pkg).stats()["kv_bytes"] * 2 // 5)
    argv = ("generate", pkg, "--ids", IDS, "--no-stop-at-eos", "--max-new-tokens", "100")
    disk = os.path.join(ctx.tmp, "kv-disk")
    os.makedirs(disk)
    out = ctx.json(*argv, "--kv-host-budget", share, "--disk-dir", disk)
    assert out["model_stats"]["kv_blocks_spilled"] > 0 and os.listdir(disk) == []
    ctx.fails(*argv, "--kv-host-budget", share, "--disk-dir", disk + "-x", match="-x does not")
    ctx.fails(*argv, "--disk-dir", disk, match="only a kv_host_budget")


def case_generate_verify(ctx):
    bad = flipped_copy(ctx.pkg, os.path.join(ctx.tmp, "bad-verify"))
    assert ctx.run("generate", bad, "--ids", IDS, "--max-new-tokens", "1")[0] == 0
    ctx.fails("generate", bad, "--ids", IDS, "--verify", match="CRC")
    rc, _, err = ctx.run("generate", ctx.pkg, "--ids", IDS, "--max-new-tokens", "1", "--verify")
    assert rc == 0 and "verified at load: " in err, err
    assert gen(ctx, "--verify")["model_stats"]["verify"]["tensors"] > 0


def case_generate_no_stop_at_eos(ctx):
    free = gen(ctx, "--max-new-tokens", "16")["output_ids"]
    # The same weights with free[3] as eos: without the flag generation stops after it.
    eos_pkg = os.path.join(ctx.tmp, "eos")
    shutil.copytree(ctx.pkg, eos_pkg)
    with open(os.path.join(eos_pkg, "manifest.json")) as f:
        manifest = json.load(f)
    manifest["config"]["eos_token_id"] = manifest["config"]["eos_token_ids"] = [free[3]]
    with open(os.path.join(eos_pkg, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    argv = ("generate", eos_pkg, "--ids", IDS, "--max-new-tokens", "16")
    stopped = ctx.json(*argv)
    assert stopped["finish_reason"] == "eos"
    assert stopped["output_ids"] == free[: free.index(free[3]) + 1]
    assert ctx.json(*argv, "--no-stop-at-eos")["output_ids"] == free


def case_generate_chat(ctx):
    model = tierlm.load(ctx.chat_pkg)
    argv = ("generate", ctx.chat_pkg, "--prompt", "tiered memory", "--max-new-tokens", "2")
    chat = ctx.json(*argv, "--chat")
    assert chat["prompt_ids"] == model.chat_prompt([{"role": "user", "content": "tiered memory"}])
    assert ctx.json(*argv)["prompt_ids"] == model.encode("tiered memory") != chat["prompt_ids"]
    ctx.fails("generate", ctx.chat_pkg, "--ids", IDS, "--chat", match="--chat takes the user")


def case_generate_json(ctx):
    rc, out, _ = ctx.run("generate", ctx.pkg, "--ids", IDS, "--max-new-tokens", "3")
    assert rc == 0 and len([int(t) for t in out.split()]) <= 3  # streamed ids, not JSON
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)
    assert set(gen(ctx, "--max-new-tokens", "1")) >= {"output_ids", "stats", "placement"}


def case_generate_verbose(ctx):
    _, _, err = ctx.run("generate", ctx.pkg, "--ids", IDS, "--max-new-tokens", "1", "--verbose")
    assert "placement:" in err and "KV cache (f16):" in err
    assert (
        "placement:" not in ctx.run("generate", ctx.pkg, "--ids", IDS, "--max-new-tokens", "1")[2]
    )


def case_generate_ring_sections(ctx):
    budget = f"host={streaming_host(ctx)}"
    one = gen(ctx, "--budget", budget, "--ring-sections", "1", "--max-new-tokens", "1")
    assert one["placement"]["streaming"] and one["placement"]["sections"] == 1
    ctx.fails("generate", ctx.pkg, "--ids", IDS, "--ring-sections", "-1", match="ring_sections")


def sparse_gen(ctx, *argv):
    return ctx.json("generate", ctx.sparse_pkg, "--ids", "5,6,7", "--max-new-tokens", "2", *argv)


def case_generate_sparse(ctx):
    assert sparse_gen(ctx, "--sparse")["model_stats"]["sparse"]
    assert not sparse_gen(ctx)["model_stats"]["sparse"]
    ctx.fails("generate", ctx.pkg, "--ids", IDS, "--sparse", match="--sparse")


def case_generate_sparse_window(ctx):
    assert sparse_gen(ctx, "--sparse", "--sparse-window", "2")["stats"]["sparse_window"] == 2
    ctx.fails(
        "generate", ctx.sparse_pkg, "--ids", "5", "--sparse-window", "0", match="sparse_window"
    )


def case_generate_no_bundling(ctx):
    s = sparse_gen(ctx, "--sparse", "--no-bundling")["stats"]
    assert s["sparse_bundled"] is False and s["sparse_requests"] == 2 * s["sparse_neurons_read"]
    assert sparse_gen(ctx, "--sparse")["stats"]["sparse_bundled"] is True


def case_generate_sparse_capacity(ctx):
    s = sparse_gen(ctx, "--sparse", "--sparse-capacity", "300")["stats"]
    assert set(s["sparse_capacity"]) == {300}
    ctx.fails(
        "generate", ctx.sparse_pkg, "--ids", "5", "--sparse-capacity", "-1", match="sparse_capacity"
    )


def case_generate_timeline(ctx):
    # Without matplotlib the option is refused before any work (the package does not exist).
    code = (
        "import sys; sys.modules['matplotlib'] = None; from tierlm.cli import main; "
        "sys.exit(main(['generate', '/nonexistent/pkg', '--ids', '1', '--timeline', 'x.png']))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 1 and "--timeline needs matplotlib" in r.stderr, r.stderr
    pytest.importorskip("matplotlib")
    png = os.path.join(ctx.tmp, "timeline.png")
    gen(ctx, "--max-new-tokens", "2", "--timeline", png)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def chat_reply(ctx, messages, **options):
    """What `tierlm chat` streams for the last user message of messages."""
    model = tierlm.load(ctx.chat_pkg)
    options.setdefault("max_new_tokens", 32)
    return "".join(t.text for t in model.stream(model.chat_prompt(messages), **options))


USER = [{"role": "user", "content": "tiered memory"}]


def case_chat_package(ctx):
    ctx.chat_fails(os.path.join(ctx.tmp, "missing"), match="missing")
    rc, replies, _ = ctx.chat(ctx.chat_pkg, "--max-new-tokens", "3", stdin="tiered memory\n\n")
    assert rc == 0 and replies == [chat_reply(ctx, USER, max_new_tokens=3)]


def case_chat_system(ctx):
    _, replies, _ = ctx.chat(ctx.chat_pkg, "--max-new-tokens", "3", "--system", "Be brief.")
    system = [{"role": "system", "content": "Be brief."}, *USER]
    assert replies == [chat_reply(ctx, system, max_new_tokens=3)]


def case_chat_max_new_tokens(ctx):
    _, replies, _ = ctx.chat(ctx.chat_pkg, "--max-new-tokens", "2")
    assert replies == [chat_reply(ctx, USER, max_new_tokens=2)]
    ctx.chat_fails(ctx.chat_pkg, "--max-new-tokens", "-1", match="max_new_tokens")


def case_chat_budget(ctx):
    assert ctx.chat(ctx.chat_pkg, "--budget", "host=48MiB", "--max-new-tokens", "1")[0] == 0
    ctx.chat_fails(ctx.chat_pkg, "--budget", "host=64KiB", match="host budget")
    ctx.chat_fails(ctx.chat_pkg, "--budget", "device=1GiB", match="device")
    ctx.chat_fails(ctx.chat_pkg, "--budget", "host", match="TIER=SIZE")


def case_chat_kv_host_budget(ctx):
    assert ctx.chat(ctx.chat_pkg, "--kv-host-budget", "16MiB", "--max-new-tokens", "1")[0] == 0
    ctx.chat_fails(ctx.chat_pkg, "--kv-host-budget", "64KiB", match="kv_host_budget 64.0 KiB")


def case_chat_disk_dir(ctx):
    argv = (ctx.chat_pkg, "--kv-host-budget", "16MiB", "--max-new-tokens", "1")
    assert ctx.chat(*argv, "--disk-dir", ctx.tmp)[0] == 0
    ctx.chat_fails(*argv, "--disk-dir", os.path.join(ctx.tmp, "none"), match="none does not")
    ctx.chat_fails(ctx.chat_pkg, "--disk-dir", ctx.tmp, match="only a kv_host_budget")


def case_chat_temperature(ctx):
    argv = (ctx.chat_pkg, "--max-new-tokens", "12", "--temperature", "5", "--seed", "3")
    hot = ctx.chat(*argv)[1]
    assert hot == [chat_reply(ctx, USER, max_new_tokens=12, temperature=5.0, seed=3)]
    ctx.chat_fails(ctx.chat_pkg, "--temperature", "-1", match="temperature")


def case_chat_top_k(ctx):
    argv = (ctx.chat_pkg, "--max-new-tokens", "8", "--temperature", "5", "--top-k", "1")
    assert ctx.chat(*argv)[1] == [chat_reply(ctx, USER, max_new_tokens=8)]
    ctx.chat_fails(ctx.chat_pkg, "--top-k", "-2", match="top_k = -2")


def case_chat_top_p(ctx):
    argv = (ctx.chat_pkg, "--max-new-tokens", "8", "--temperature", "5", "--top-p", "1e-6")
    assert ctx.chat(*argv)[1] == [chat_reply(ctx, USER, max_new_tokens=8)]
    ctx.chat_fails(ctx.chat_pkg, "--top-p", "0", match="top_p")


def case_chat_repetition_penalty(ctx):
    argv = (ctx.chat_pkg, "--max-new-tokens", "8", "--repetition-penalty", "50")
    assert ctx.chat(*argv)[1] == [chat_reply(ctx, USER, max_new_tokens=8, repetition_penalty=50.0)]
    ctx.chat_fails(ctx.chat_pkg, "--repetition-penalty", "0", match="repetition")


def case_chat_repetition_last_n(ctx):
    argv = (ctx.chat_pkg, "--max-new-tokens", "8", "--repetition-penalty", "50")
    expected = chat_reply(ctx, USER, max_new_tokens=8, repetition_penalty=50.0, repetition_last_n=1)
    assert ctx.chat(*argv, "--repetition-last-n", "1")[1] == [expected]
    ctx.chat_fails(ctx.chat_pkg, "--repetition-last-n", "-1", match="last_n = -1")


def case_chat_seed(ctx):
    argv = (ctx.chat_pkg, "--max-new-tokens", "12", "--temperature", "5", "--seed")
    assert ctx.chat(*argv, "1")[1] == [
        chat_reply(ctx, USER, max_new_tokens=12, temperature=5.0, seed=1)
    ]
    ctx.chat_fails(ctx.chat_pkg, "--seed", "-1", match="seed = -1")


def case_chat_threads(ctx):
    before = _core.cpu_info()["threads"]
    try:
        assert ctx.chat(ctx.chat_pkg, "--threads", "2", "--max-new-tokens", "1")[0] == 0
        assert _core.cpu_info()["threads"] == 2
        ctx.chat_fails(ctx.chat_pkg, "--threads", "1000000", match="0..1024")
    finally:
        _core.set_threads(before)


def case_chat_kv_dtype(ctx):
    assert ctx.chat(ctx.chat_pkg, "--kv-dtype", "bf16", "--max-new-tokens", "1")[0] == 0
    ctx.chat_fails(ctx.chat_pkg, "--kv-dtype", "int7", match="unknown dtype 'int7'")


def case_chat_kv_policy(ctx):
    for policy in ("window:4+124", "sirllm:4+60+64", "h2o:4+60+64"):
        rc = ctx.chat(ctx.chat_pkg, "--kv-policy", policy, "--max-new-tokens", "1")[0]
        assert rc == 0
    ctx.chat_fails(ctx.chat_pkg, "--kv-policy", "sink:4", match="kv_policy 'sink:4'")
    ctx.chat_fails(ctx.chat_pkg, "--kv-policy", "h2o:4+60+0", match="kv_policy 'h2o:4+60+0'")


def case_chat_max_context(ctx):
    assert ctx.chat(ctx.chat_pkg, "--max-context", "64", "--max-new-tokens", "1")[0] == 0
    # the templated message alone is longer than 8 tokens
    ctx.chat_fails(ctx.chat_pkg, "--max-context", "8", match="8")
    ctx.chat_fails(ctx.chat_pkg, "--max-context", "-1", match="max_context")


def export(ctx, name, *argv):
    out = os.path.join(ctx.tmp, name)
    return out, ctx.json("export", ctx.hf, out, "--no-progress", *argv)


def manifest(path):
    with open(os.path.join(path, "manifest.json")) as f:
        return json.load(f)


def case_export_hf_dir(ctx):
    ctx.fails("export", os.path.join(ctx.tmp, "no-hf"), os.path.join(ctx.tmp, "x"), match="no-hf")


def case_export_out_dir(ctx):
    out, summary = export(ctx, "exported")
    assert summary["package"] == out and manifest(out)["architecture"]


def case_export_dtype(ctx):
    out, summary = export(ctx, "f16", "--dtype", "f16")
    assert summary["dtype"] == "f16" == manifest(out)["dtype"]
    out, summary = export(ctx, "q8_0", "--dtype", "q8_0")  # a block type quantizes
    assert manifest(out)["quantization"]["dtype"] == "q8_0"
    assert tierlm.load(out).generate([5, 7], max_new_tokens=1).output_ids


def case_export_recipe(ctx):
    out, _ = export(ctx, "recipe-m", "--dtype", "q8_0", "--recipe", "m")
    assert manifest(out)["quantization"]["recipe"]["name"] == "m"
    plain, _ = export(ctx, "no-recipe", "--dtype", "q8_0")
    assert manifest(plain)["quantization"]["recipe"] is None
    ctx.fails(
        "export", ctx.hf, os.path.join(ctx.tmp, "x"), "--recipe", "xl", match="not a built-in"
    )


def case_export_max_positions(ctx):
    out, _ = export(ctx, "short", "--max-positions", "32")
    assert manifest(out)["config"]["max_positions"] == 32


def case_export_sparse(ctx):
    out, summary = export(ctx, "sparse", "--sparse")
    assert len(summary["bundles"]) == len(manifest(out)["bundles"]["layers"]) > 0
    assert "bundles" not in export(ctx, "dense")[1]


def case_export_overwrite(ctx):
    out, _ = export(ctx, "twice")
    ctx.fails("export", ctx.hf, out, "--no-progress", match="--overwrite")
    assert export(ctx, "twice", "--overwrite")[1]["package"] == out


def case_export_no_progress(ctx):
    assert ctx.run("export", ctx.hf, os.path.join(ctx.tmp, "p1"))[2]  # the progress bar
    assert ctx.run("export", ctx.hf, os.path.join(ctx.tmp, "p2"), "--no-progress")[2] == ""


def case_export_json(ctx):
    rc, out, _ = ctx.run("export", ctx.hf, os.path.join(ctx.tmp, "text"), "--no-progress")
    assert rc == 0 and out.startswith("exported ")
    assert export(ctx, "as-json")[1]["tensors"] > 0


def case_info_json(ctx):
    info = ctx.json("info")
    assert "io" in json.dumps(info)
    rc, out, _ = ctx.run("info")
    assert rc == 0
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def case_info_cmake_dir(ctx):
    rc, out, _ = ctx.run("info", "--cmake-dir")
    assert rc == 0 and os.path.exists(os.path.join(out.strip(), "tierlmConfig.cmake"))


@pytest.fixture(scope="module")
def train_base(shared):
    """An OPT package with bundles and calibration text, for `tierlm sparse train`."""
    pkg = str(shared["root"] / "train-pkg")
    assert main(["export", shared["hf"], pkg, "--sparse", "--no-progress"]) == 0
    text = shared["root"] / "cal.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    held = shared["root"] / "held.txt"
    held.write_text("pack my box with five dozen liquor jugs. " * 20)
    return pkg, str(text), str(held)


@pytest.fixture(scope="module")
def calibrate_base(shared):
    """A Llama checkpoint with a tokenizer and short texts, for `tierlm sparse calibrate`."""
    _, hf = hf_checkpoint("llama", shared["root"] / "hf-cal", tokenizer=True, vocab_size=300)
    text = shared["root"] / "cal-llama.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 30)
    held = shared["root"] / "held-llama.txt"
    held.write_text("pack my box with five dozen liquor jugs. " * 10)
    return hf, str(text), str(held)


@pytest.fixture(scope="module")
def moe_pkg(shared):
    """A small Mixtral package with a tokenizer, for `tierlm moe profile`."""
    return package(
        "mixtral",
        str(shared["root"]),
        tokenizer=True,
        vocab_size=300,
        num_hidden_layers=2,
        max_position_embeddings=64,
    )[1]


def profile(ctx, *argv):
    """`tierlm moe profile` of the moe package as JSON, checked against the file it wrote."""
    out = ctx.json("moe", "profile", ctx.moe_pkg, *argv)
    with open(os.path.join(ctx.moe_pkg, "expert_usage.json")) as f:
        assert json.load(f) == out
    return out


def case_moe_profile_package(ctx):
    out = profile(ctx, "--ids", IDS)
    assert [sum(layer["tokens_per_expert"]) for layer in out["layers"]] == [4 * 2, 4 * 2]  # top-2
    ctx.fails("moe", "profile", ctx.pkg, "--ids", IDS, match="no mixture-of-experts layers")


def case_moe_profile_text(ctx):
    path = os.path.join(ctx.tmp, "calibration.txt")
    text = "tiered memory for experts"
    with open(path, "w") as f:
        f.write(text)
    out = profile(ctx, "--text", path)
    assert out["source"] == "text" and out["tokens"] == len(tierlm.load(ctx.moe_pkg).encode(text))
    assert profile(ctx)["source"] == "calibration.txt"  # without: the text tierlm ships
    ctx.fails("moe", "profile", ctx.moe_pkg, "--text", path + ".none", match="calibration file")


def case_moe_profile_ids(ctx):
    out = profile(ctx, "--ids", "5,7,11,13,17")
    assert out["source"] == "ids" and out["tokens"] == 5
    assert out == tierlm.profile_experts(ctx.moe_pkg, ids=[5, 7, 11, 13, 17])
    ctx.fails("moe", "profile", ctx.moe_pkg, "--ids", "5,x", match="--ids")


def case_moe_profile_max_tokens(ctx):
    assert profile(ctx, "--ids", "5,7,11,13,17", "--max-tokens", "3")["tokens"] == 3
    ctx.fails("moe", "profile", ctx.moe_pkg, "--max-tokens", "0", match="max_tokens")


def case_moe_profile_budget(ctx):
    # every expert homed or cached under a budget: the same routing, the same counts
    whole = profile(ctx, "--ids", IDS)
    assert profile(ctx, "--ids", IDS, "--budget", "host=2MiB") == whole
    ctx.fails("moe", "profile", ctx.moe_pkg, "--budget", "host=4KiB", match="host")
    ctx.fails("moe", "profile", ctx.moe_pkg, "--budget", "host", match="TIER=SIZE")


def case_moe_profile_json(ctx):
    rc, out, _ = ctx.run("moe", "profile", ctx.moe_pkg, "--ids", IDS)
    assert rc == 0 and out.startswith("profiled 4 tokens (ids) into ")
    assert "layer 1: most used experts" in out
    assert profile(ctx, "--ids", IDS)["tokens"] == 4


CASES = {
    name.removeprefix("case_").replace("_", " "): fn
    for module in (sys.modules[__name__], cli_option_cases)
    for name, fn in vars(module).items()
    if name.startswith("case_")
}


def option_key(option):
    """'generate --max-new-tokens' -> 'generate max new tokens' (the case function's name)."""
    return option.replace("--", "").replace("-", " ").replace("_", " ")


def test_every_cli_option_has_a_case():
    keys = {option_key(o) for o in cli_options()}
    assert keys == set(CASES), (
        f"options without a case: {sorted(keys - set(CASES))}; "
        f"cases without an option: {sorted(set(CASES) - keys)}"
    )


@pytest.mark.parametrize("option", cli_options())
def test_cli_option_acts_or_is_refused(option, shared, request, tmp_path, capsys):
    ctx = Ctx(shared["root"], capsys)
    ctx.pkg, ctx.hf, ctx.tmp = shared["pkg"], shared["hf"], str(tmp_path)
    ctx.demo_cache = str(shared["root"] / "demo-cache")
    key = option_key(option)
    if key.startswith("generate") or key == "debug":
        if any(s in key for s in ("sparse", "bundling", "prompt")):
            ctx.sparse_pkg = request.getfixturevalue("sparse_pkg")
    if key.startswith("chat") or key == "generate chat":
        ctx.chat_pkg = request.getfixturevalue("chat_pkg")
    if key.startswith("sparse train"):
        ctx.train = request.getfixturevalue("train_base")
    if key.startswith("moe profile"):
        ctx.moe_pkg = request.getfixturevalue("moe_pkg")
    if key.startswith("sparse calibrate"):
        ctx.calibrate = request.getfixturevalue("calibrate_base")
    if key.startswith("demo") and not os.path.exists(os.path.join(DEMO, "config.json")):
        pytest.skip("demo model not shipped")
    CASES[key](ctx)
