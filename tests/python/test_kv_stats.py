"""The KV cache's figures in the stats record and `tierlm generate --verbose`: host and disk
bytes, blocks spilled and read back (the disk tier's, tests/python/test_kv_spill.py), tokens
evicted, and the time in the attention ops per token."""

import re

import pytest
import tierlm
from models import package, prompt
from tierlm.cli import main

IDS = prompt(20, seed=7)


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    return package("llama", str(tmp_path_factory.mktemp("kvs")), seed=13)[1]


def test_attention_time_and_tokens_are_counted(pkg):
    model = tierlm.load(pkg, threads=2)
    s = model.stats()
    assert (s["attention_tokens"], s["attention_seconds"]) == (0, 0.0)
    # On the host tier only: nothing on disk, nothing read back.
    assert (s["kv_disk_bytes"], s["kv_slices_read"]) == (0, 0)
    model.generate(IDS, max_new_tokens=10, stop_at_eos=False)
    s = model.stats()
    assert s["attention_tokens"] == 20 + 9  # the prompt, then a step per token but the last
    run = s["prefill_seconds"] + s["decode_seconds"]
    assert 0 < s["attention_seconds"] < run
    assert s["attention_seconds_per_token"] == pytest.approx(s["attention_seconds"] / 29)
    model.logits(IDS[:5])  # every forward counts, not only generate's
    assert model.stats()["attention_tokens"] == 29 + 5
    assert model.stats()["attention_seconds"] > s["attention_seconds"]
    assert (s["kv_disk_bytes"], s["kv_slices_read"]) == (0, 0)


def test_verbose_prints_the_kv_figures(pkg, capsys):
    """--verbose ends with the KV line; its figures are the stats of the same run in Python
    (a window policy so that tokens are evicted)."""
    argv = ["generate", pkg, "--ids", ",".join(map(str, IDS)), "--max-new-tokens", "100"]
    argv += ["--no-stop-at-eos", "--kv-policy", "window:4+92", "--threads", "2", "--verbose"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    line = re.search(
        r"KV cache \(f16\): (\d+) blocks of 32 tokens, (.+) on host, 0 B on disk, "
        r"0 blocks spilled, 0 layer slices read back, (\d+) tokens evicted; "
        r"attention (\d+\.\d+) ms/token, (\d+)% of the run",
        err,
    )
    assert line, err
    model = tierlm.load(pkg, threads=2, kv_policy="window:4+92")
    model.generate(IDS, max_new_tokens=100, stop_at_eos=False)
    s = model.stats()
    assert int(line[1]) == s["kv_blocks"] and int(line[3]) == s["kv_evicted"] > 0
    assert float(line[4]) > 0 and 0 < int(line[5]) <= 100
