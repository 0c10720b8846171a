"""The cases of test_cli_options.py for the tool commands (demo, plan, sparse train / bundle,
bench io): one function per option, named case_<command>_<option>, each taking the test's
context (ctx.run / ctx.json / ctx.fails run `tierlm`; ctx.tmp, ctx.pkg, ctx.hf, ...)."""

import json
import os
import subprocess
import sys

import pytest
import tierlm

DEMO_ARGS = ("--model", "opt", "--max-new-tokens", "3")


def demo(ctx, *argv):
    return ctx.json("demo", "--cache-dir", ctx.demo_cache, *DEMO_ARGS, *argv)


def case_demo_prompt(ctx):
    out = demo(ctx, "--prompt", "import os")
    assert out["prompt"] == "import os" and out["prompt_ids"] == tierlm.load(out["package"]).encode(
        "import os"
    )


def case_demo_max_new_tokens(ctx):
    assert len(demo(ctx, "--max-new-tokens", "2")["output_ids"]) <= 2
    ctx.fails(
        "demo",
        "--cache-dir",
        ctx.demo_cache,
        "--model",
        "opt",
        "--max-new-tokens",
        "-1",
        match="max_new",
    )


def case_demo_budget(ctx):
    assert demo(ctx, "--budget", "64MiB")["host_budget"] == 64 << 20
    ctx.fails(
        "demo",
        "--cache-dir",
        ctx.demo_cache,
        "--model",
        "opt",
        "--budget",
        "lots",
        match="--budget",
    )


def case_demo_temperature(ctx):
    greedy = demo(ctx, "--max-new-tokens", "12", "--temperature", "0")["output_ids"]
    hot = [
        demo(ctx, "--max-new-tokens", "12", "--temperature", "5", "--seed", str(s)) for s in (1, 2)
    ]
    assert any(h["output_ids"] != greedy for h in hot)


def case_demo_top_k(ctx):
    greedy = demo(ctx, "--max-new-tokens", "8", "--temperature", "0")["output_ids"]
    assert (
        demo(ctx, "--max-new-tokens", "8", "--temperature", "5", "--top-k", "1")["output_ids"]
        == greedy
    )
    ctx.fails(
        "demo", "--cache-dir", ctx.demo_cache, "--model", "opt", "--top-k", "-1", match="top_k = -1"
    )


def case_demo_seed(ctx):
    a = demo(ctx, "--max-new-tokens", "12", "--temperature", "5", "--seed", "1")["output_ids"]
    assert (
        a == demo(ctx, "--max-new-tokens", "12", "--temperature", "5", "--seed", "1")["output_ids"]
    )
    ctx.fails(
        "demo", "--cache-dir", ctx.demo_cache, "--model", "opt", "--seed", "-1", match="seed = -1"
    )


def case_demo_cache_dir(ctx):
    assert demo(ctx)["package"].startswith(ctx.demo_cache)
    assert os.path.exists(os.path.join(ctx.demo_cache, "ready.json"))


def case_demo_rebuild(ctx):
    marker = os.path.join(ctx.demo_cache, "package", "stale")
    open(marker, "w").close()
    demo(ctx)
    assert os.path.exists(marker)  # cached: kept
    demo(ctx, "--rebuild")
    assert not os.path.exists(marker)  # rebuilt


def case_demo_model(ctx):
    assert demo(ctx)["model"] == "opt"
    from tierlm.cli.demo import smollm2_gguf

    auto = ctx.json("demo", "--cache-dir", ctx.tmp + "/auto", "--max-new-tokens", "2")
    assert auto["model"] == ("smollm2" if smollm2_gguf() else "opt")
    with pytest.raises(SystemExit):  # argparse refuses a model it does not list
        ctx.run("demo", "--model", "gpt5")


def case_demo_json(ctx):
    rc, out, _ = ctx.run("demo", "--cache-dir", ctx.demo_cache, *DEMO_ARGS)
    assert rc == 0 and "host peak" in out
    assert "output_ids" in demo(ctx)


def buffers_file(ctx):
    path = os.path.join(ctx.tmp, "buffers.json")
    sizes = [(i * 7919) % 5000 + 100 for i in range(24)]
    starts = [i // 2 for i in range(24)]
    ends = [s + (i % 5) for i, s in enumerate(starts)]
    with open(path, "w") as f:
        json.dump({"sizes": sizes, "starts": starts, "ends": ends}, f)
    return path


def plan(ctx, *argv):
    return ctx.json("plan", buffers_file(ctx), *argv)


def case_plan_input(ctx):
    assert plan(ctx)["buffers"] == 24
    ctx.fails("plan", os.path.join(ctx.tmp, "none.json"), match="none.json")


def case_plan_method(ctx):
    assert plan(ctx, "--method", "greedy")["solver"].startswith("greedy")
    assert plan(ctx, "--method", "mip", "--time-limit", "5")["method"] == "mip"


def case_plan_solver(ctx):
    assert plan(ctx, "--method", "mip", "--solver", "highs", "--time-limit", "5")["solver"] in (
        "highs",
        "greedy",
    )
    # After a plain `pip install .` (no OR-Tools) the default solver is HiGHS and works.
    code = (
        "import sys; sys.modules['ortools'] = None; from tierlm.cli import main; "
        f"sys.exit(main(['plan', {buffers_file(ctx)!r}, '--method', 'mip', '--json']))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["solver"] in ("highs", "greedy")


def case_plan_time_limit(ctx):
    assert plan(ctx, "--method", "mip", "--time-limit", "0.5")["seconds"] < 5


def case_plan_seq(ctx):
    ctx.fails("plan", ctx.pkg, match="--seq")
    assert (
        ctx.json("plan", ctx.pkg, "--seq", "4", "--out", os.path.join(ctx.tmp, "s.json"))["buffers"]
        > 0
    )


def case_plan_align(ctx):
    out = os.path.join(ctx.tmp, "aligned.json")
    plan(ctx, "--align", "4096", "--out", out)
    with open(out) as f:
        doc = json.load(f)
    assert doc["align"] == 4096 and all(b["offset"] % 4096 == 0 for b in doc["buffers"])


def case_plan_out(ctx):
    out = os.path.join(ctx.tmp, "plan-out.json")
    assert plan(ctx, "--out", out)["written"] == out and os.path.exists(out)
    assert plan(ctx)["written"] is None


def case_plan_json(ctx):
    rc, out, _ = ctx.run("plan", buffers_file(ctx))
    assert rc == 0 and "lower bound" in out
    assert "peak" in plan(ctx)


def train(ctx, *argv):
    pkg, text, _ = ctx.train
    fast = ("--epochs", "1", "--min-steps", "2", "--max-tokens", "512")
    return ctx.json("sparse", "train", pkg, "--calibration", text, *fast, *argv)


def case_sparse_train_model(ctx):
    _, text, _ = ctx.train
    ctx.fails(
        "sparse", "train", os.path.join(ctx.tmp, "nomodel"), "--calibration", text, match="nomodel"
    )
    assert train(ctx)["manifest_updated"]


def case_sparse_train_calibration(ctx):
    pkg, _, _ = ctx.train
    ctx.fails(
        "sparse", "train", pkg, "--calibration", os.path.join(ctx.tmp, "no.txt"), match="no.txt"
    )


def case_sparse_train_held_out(ctx):
    _, _, held = ctx.train
    assert train(ctx, "--held-out", held)["held_out_tokens"] != train(ctx)["held_out_tokens"]


def case_sparse_train_rank(ctx):
    assert set(train(ctx, "--rank", "5", "--last-layers", "0")["ranks"]) == {5}


def case_sparse_train_last_rank(ctx):
    assert train(ctx, "--rank", "5", "--last-rank", "9", "--last-layers", "1")["ranks"][-1] == 9


def case_sparse_train_last_layers(ctx):
    ranks = train(ctx, "--rank", "5", "--last-rank", "9", "--last-layers", "2")["ranks"]
    assert ranks[-2:] == [9, 9] and ranks[0] == 5


def case_sparse_train_epochs(ctx):
    one = train(ctx, "--epochs", "1", "--min-steps", "1", "--seed", "1")
    three = train(ctx, "--epochs", "3", "--min-steps", "1", "--seed", "1")
    assert one["layers"] != three["layers"]


def case_sparse_train_min_steps(ctx):
    a = train(ctx, "--min-steps", "1", "--seed", "1")["layers"]
    assert a != train(ctx, "--min-steps", "40", "--seed", "1")["layers"]


def case_sparse_train_max_tokens(ctx):
    assert train(ctx, "--max-tokens", "64")["train_tokens"] <= 64 < train(ctx)["train_tokens"]


def case_sparse_train_threshold(ctx):
    low = train(ctx, "--threshold", "0.05", "--seed", "1")["layers"]
    high = train(ctx, "--threshold", "0.95", "--seed", "1")["layers"]
    assert low[0]["predicted_density"] >= high[0]["predicted_density"] and low != high
    pkg, text, _ = ctx.train
    ctx.fails(
        "sparse", "train", pkg, "--calibration", text, "--threshold", "1.5", match="--threshold"
    )


def case_sparse_train_seed(ctx):
    assert train(ctx, "--seed", "1")["layers"] != train(ctx, "--seed", "2")["layers"]


def case_sparse_train_target_sparsity(ctx):
    pkg, text, _ = ctx.train  # OPT's ReLU FFN is exactly sparse: a lossy target is refused
    ctx.fails(
        "sparse", "train", pkg, "--calibration", text, "--target-sparsity", "0.5", match="target"
    )


def case_sparse_train_min_recall(ctx):
    result = train(ctx, "--min-recall", "1.0", "--seed", "1")
    assert result["dense_fallback_layers"] == [
        m["layer"] for m in result["layers"] if m.get("trained_recall", m["recall"]) < 1.0
    ]
    assert all(m["recall"] == 1.0 for m in result["layers"] if m.get("fallback"))
    assert train(ctx, "--min-recall", "0", "--seed", "1")["dense_fallback_layers"] == []
    pkg, text, _ = ctx.train
    ctx.fails(
        "sparse", "train", pkg, "--calibration", text, "--min-recall", "2", match="--min-recall"
    )


def case_sparse_train_threads(ctx):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # the tests run torch on one thread (conftest.py)
        train(ctx, "--threads", "1")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def case_sparse_train_out(ctx):
    out = os.path.join(ctx.tmp, "predictors-out")
    assert train(ctx, "--out", out)["out"] == out
    assert os.path.exists(os.path.join(out, "predictors.safetensors"))


def case_sparse_train_json(ctx):
    pkg, text, _ = ctx.train
    rc, out, _ = ctx.run(
        "sparse",
        "train",
        pkg,
        "--calibration",
        text,
        "--epochs",
        "1",
        "--min-steps",
        "2",
        "--max-tokens",
        "512",
    )
    assert rc == 0 and out.startswith("trained ")
    assert "ranks" in train(ctx)


def bundle(ctx, name, *argv):
    out = os.path.join(ctx.tmp, name)
    return out, ctx.json("sparse", "bundle", ctx.hf, out, *argv)


def case_sparse_bundle_model(ctx):
    ctx.fails(
        "sparse", "bundle", os.path.join(ctx.tmp, "none"), os.path.join(ctx.tmp, "b"), match="none"
    )


def case_sparse_bundle_out(ctx):
    out, result = bundle(ctx, "bundles")
    assert result["out"] == out and os.path.exists(os.path.join(out, "bundles.json"))


def case_sparse_bundle_dtype(ctx):
    f32 = bundle(ctx, "b32", "--dtype", "f32")[1]["layers"][0]["row_bytes"]
    assert f32 == 2 * bundle(ctx, "b16", "--dtype", "f16")[1]["layers"][0]["row_bytes"]


def case_sparse_bundle_json(ctx):
    rc, out, _ = ctx.run("sparse", "bundle", ctx.hf, os.path.join(ctx.tmp, "btext"))
    assert rc == 0 and out.startswith("wrote ")
    assert bundle(ctx, "bjson")[1]["layers"]


def calibrate(ctx, *argv, out="cal-out"):
    hf, text, held = ctx.calibrate
    base = ("--calibration", text, "--held-out", held, "--target-sparsity", "0.4")
    return ctx.json("sparse", "calibrate", hf, *base, "--out", os.path.join(ctx.tmp, out), *argv)


def case_sparse_calibrate_model(ctx):
    _, text, _ = ctx.calibrate
    ctx.fails(
        "sparse",
        "calibrate",
        os.path.join(ctx.tmp, "nomodel"),
        "--target-sparsity",
        "0.4",
        match="nomodel",
    )
    ctx.fails(
        "sparse",
        "calibrate",
        ctx.hf,
        "--target-sparsity",
        "0.4",
        "--calibration",
        text,
        "--out",
        os.path.join(ctx.tmp, "o"),
        match="gated",
    )
    assert calibrate(ctx)["quality"]["perplexity"] > 0


def case_sparse_calibrate_target_sparsity(ctx):
    def total(target):
        layers = calibrate(ctx, "--target-sparsity", target)["thresholds"]
        return sum(t for layer in layers for t in layer.values())

    assert 0 < total("0.2") < total("0.6")
    hf, _, _ = ctx.calibrate
    ctx.fails("sparse", "calibrate", hf, "--target-sparsity", "1", match="--target-sparsity")


def case_sparse_calibrate_calibration(ctx):
    hf, _, held = ctx.calibrate
    ctx.fails(
        "sparse",
        "calibrate",
        hf,
        "--target-sparsity",
        "0.4",
        "--calibration",
        os.path.join(ctx.tmp, "no.txt"),
        match="no.txt",
    )
    assert calibrate(ctx, "--calibration", held)["thresholds"] != calibrate(ctx)["thresholds"]


def case_sparse_calibrate_held_out(ctx):
    _, text, _ = ctx.calibrate
    a = calibrate(ctx)["quality"]["held_out_tokens"]
    assert calibrate(ctx, "--held-out", text)["quality"]["held_out_tokens"] != a


def case_sparse_calibrate_max_tokens(ctx):
    assert calibrate(ctx, "--max-tokens", "40")["calibration_tokens"] == 40
    hf, _, _ = ctx.calibrate
    ctx.fails(
        "sparse",
        "calibrate",
        hf,
        "--target-sparsity",
        "0.4",
        "--max-tokens",
        "3",
        match="--max-tokens",
    )


def case_sparse_calibrate_held_out_tokens(ctx):
    assert calibrate(ctx, "--held-out-tokens", "0")["quality"] is None
    assert calibrate(ctx, "--held-out-tokens", "33")["quality"]["held_out_tokens"] == 33
    hf, _, _ = ctx.calibrate
    ctx.fails(
        "sparse",
        "calibrate",
        hf,
        "--target-sparsity",
        "0.4",
        "--held-out-tokens",
        "-1",
        match="--held-out-tokens",
    )


def case_sparse_calibrate_allocation(ctx):
    uniform = calibrate(ctx, "--allocation", "uniform")
    assert {v for layer in uniform["site_sparsity"] for v in layer.values()} == {0.4}
    greedy = calibrate(ctx, "--allocation", "greedy", "--rotation", "none")
    assert greedy["allocation"] == "greedy"
    assert len({v for layer in greedy["site_sparsity"] for v in layer.values()}) > 1


def case_sparse_calibrate_criterion(ctx):
    scaled = calibrate(ctx, "--criterion", "weight_norm", "--rotation", "none", out="c-wn")
    assert scaled["criterion"] == "weight_norm"
    assert scaled["thresholds"] != calibrate(ctx, "--criterion", "magnitude")["thresholds"]
    with open(os.path.join(scaled["out"], "channel_sparsity.json")) as f:
        assert "scales" in json.load(f)


def case_sparse_calibrate_rotation(ctx):
    rotated = calibrate(ctx, "--rotation", "site", out="c-rot")
    assert rotated["rotation"] == "site"
    assert rotated["thresholds"] != calibrate(ctx, "--rotation", "none")["thresholds"]
    with open(os.path.join(rotated["out"], "channel_sparsity.json")) as f:
        assert json.load(f)["rotation"]["scope"] == "site"
    assert os.path.exists(os.path.join(rotated["out"], "channel_rotations.safetensors"))
    output = calibrate(ctx, "--rotation", "output", out="c-rot-out")
    assert output["rotation"] == "output" and output["thresholds"] != rotated["thresholds"]
    assert calibrate(ctx)["rotation"] == "output"  # the default
    hf, _, _ = ctx.calibrate
    ctx.fails(
        "sparse",
        "calibrate",
        hf,
        "--target-sparsity",
        "0.4",
        "--allocation",
        "greedy",
        match="--rotation none",
    )
    with open(os.path.join(output["out"], "channel_sparsity.json")) as f:
        assert json.load(f)["rotation"]["axes"] == "output"
    # A package as --out: the executor runs the rotated columns.
    hf, _, _ = ctx.calibrate
    pkg = tierlm.export(hf, os.path.join(ctx.tmp, "rot-pkg"), progress=False, overwrite=True)
    assert calibrate(ctx, "--rotation", "site", out="rot-pkg")["package"]
    gen = ctx.json("generate", pkg, "--ids", "5,7,11", "--max-new-tokens", "2", "--sparse")
    assert gen["model_stats"]["sparse_channels"]


def case_sparse_calibrate_dtype(ctx):
    f32 = calibrate(ctx, "--dtype", "f32", out="c32")["bundle_bytes"]
    assert f32 > calibrate(ctx, "--dtype", "f16", out="c16")["bundle_bytes"]


def case_sparse_calibrate_out(ctx):
    result = calibrate(ctx, out="elsewhere")
    assert result["out"] == os.path.join(ctx.tmp, "elsewhere")
    assert os.path.exists(os.path.join(result["out"], "channel_sparsity.json"))
    assert os.path.exists(os.path.join(result["out"], "channels.json"))
    # A package as --out: its manifest lists the channel files, and --sparse runs them.
    hf, _, _ = ctx.calibrate
    pkg = tierlm.export(hf, os.path.join(ctx.tmp, "cal-pkg"), progress=False, overwrite=True)
    result = calibrate(ctx, out="cal-pkg")
    assert result["package"] and result["bundle_dtypes"] == ["f32"]
    gen = ctx.json("generate", pkg, "--ids", "5,7,11", "--max-new-tokens", "2", "--sparse")
    assert gen["model_stats"]["sparse_channels"]


def case_sparse_calibrate_json(ctx):
    hf, text, held = ctx.calibrate
    rc, out, _ = ctx.run(
        "sparse",
        "calibrate",
        hf,
        "--target-sparsity",
        "0.4",
        "--calibration",
        text,
        "--held-out",
        held,
        "--out",
        os.path.join(ctx.tmp, "t"),
    )
    assert rc == 0 and out.startswith("LOSSY input-channel sparsity 0.4")
    assert "thresholds" in calibrate(ctx)


def bench(ctx, *argv):
    path = os.path.join(ctx.tmp, "bench.bin")
    return ctx.json("bench", "io", path, "--create", "1MiB", "--seconds", "0.05", *argv)


def case_bench_io_file(ctx):
    ctx.fails(
        "bench", "io", os.path.join(ctx.tmp, "absent.bin"), "--seconds", "0.05", match="absent.bin"
    )


def case_bench_io_create(ctx):
    assert bench(ctx)["file"].endswith("bench.bin")
    assert os.path.getsize(os.path.join(ctx.tmp, "bench.bin")) == 1 << 20


def case_bench_io_block(ctx):
    assert bench(ctx, "--block", "8KiB")["block"] == 8192


def case_bench_io_qd(ctx):
    assert bench(ctx, "--qd", "3")["queue_depth"] == 3


def case_bench_io_backend(ctx):
    assert bench(ctx, "--backend", "threads")["backend"] == "threads"


def case_bench_io_seconds(ctx):
    assert bench(ctx, "--seconds", "0.2")["seconds"] >= 0.15


def case_bench_io_buffered(ctx):
    assert bench(ctx, "--buffered")["direct"] is False


def case_bench_io_json(ctx):
    path = os.path.join(ctx.tmp, "bench.bin")
    bench(ctx)
    rc, out, _ = ctx.run("bench", "io", path, "--seconds", "0.05")
    assert rc == 0 and "IOPS" in out
