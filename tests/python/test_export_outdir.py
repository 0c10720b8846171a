"""What an export may write or replace: --overwrite replaces only a tierlm package, never the
user's own files, the source or a folder holding it; killed exports' staging folders are cleaned
up; a failed write names the file and leaves OUT as it was."""

import os
import resource
import signal
import subprocess
import sys
import textwrap

import pytest
import tierlm
from models import package
from tierlm.package import Package


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    _, pkg = package("opt", str(tmp_path_factory.mktemp("outdir")))
    return pkg[: -len("-pkg")] + "-hf"


def snapshot(path):
    """Every file under path with its bytes, to show nothing there changed."""
    files = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                files[os.path.relpath(full, path)] = f.read()
    return files


def test_overwrite_refuses_a_folder_of_user_files(hf_dir, tmp_path):
    out = tmp_path / "mine"
    os.makedirs(out / "notes")
    (out / "notes" / "todo.txt").write_text("keep me")
    (out / "manifest.json").write_text('{"format": "something-else"}')
    before = snapshot(out)
    with pytest.raises(tierlm.InvalidArgumentError, match="not a tierlm package"):
        tierlm.export(hf_dir, out, progress=False, overwrite=True)
    assert snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["mine"]


def test_overwrite_refuses_the_source_and_its_parents(hf_dir, tmp_path):
    before = snapshot(hf_dir)
    for out in (hf_dir, os.path.dirname(hf_dir), hf_dir + "/"):
        with pytest.raises(tierlm.InvalidArgumentError, match="holds the source"):
            tierlm.export(hf_dir, out, progress=False, overwrite=True)
    assert snapshot(hf_dir) == before


def test_out_that_is_a_file_is_refused(hf_dir, tmp_path):
    out = tmp_path / "file"
    out.write_text("data")
    with pytest.raises(tierlm.InvalidArgumentError, match="not a directory"):
        tierlm.export(hf_dir, out, progress=False, overwrite=True)
    assert out.read_text() == "data"


def test_overwrite_replaces_a_package(hf_dir, tmp_path):
    out = tmp_path / "pkg"
    tierlm.export(hf_dir, out, progress=False)
    tierlm.export(hf_dir, out, progress=False, overwrite=True, dtype="bf16")
    assert Package.open(out).manifest["dtype"] == "bf16"
    assert sorted(os.listdir(tmp_path)) == ["pkg"]


def test_stale_staging_of_a_killed_export_is_removed(hf_dir, tmp_path):
    out = tmp_path / "pkg"
    code = textwrap.dedent(f"""
        import os, signal, sys, tierlm
        def killed(tmp, out_dir):
            os.kill(os.getpid(), signal.SIGKILL)   # dies with the package staged, not installed
        sys.modules["tierlm.export"].install = killed
        tierlm.export({hf_dir!r}, {str(out)!r}, progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = [n for n in os.listdir(tmp_path) if n.startswith(".pkg.tmp-")]
    assert len(left) == 1 and not os.path.exists(out)
    # A folder that merely looks like staging but is not ours stays.
    foreign = tmp_path / ".pkg.tmp-user"
    os.makedirs(foreign)
    (foreign / "data").write_text("not tierlm's")
    tierlm.export(hf_dir, out, progress=False)
    assert sorted(os.listdir(tmp_path)) == [".pkg.tmp-user", "pkg"]
    assert (foreign / "data").read_text() == "not tierlm's"


def test_failed_write_names_the_file_and_leaves_out_as_it_was(hf_dir, tmp_path):
    out = tmp_path / "pkg"
    tierlm.export(hf_dir, out, progress=False)
    before = snapshot(out)
    limit = 64 * 1024  # smaller than the weight file: its write fails with EFBIG

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    code = f"""
import sys, tierlm
try:
    tierlm.export({hf_dir!r}, {str(out)!r}, progress=False, overwrite=True, dtype="bf16")
except OSError as error:
    print(error); sys.exit(7)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=small_files
    )
    assert proc.returncode == 7, proc.stderr
    message = proc.stdout.strip()
    assert f"export to {out} failed writing" in message and "weights-0.bin" in message
    assert "was left as it was" in message
    assert snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["pkg"]
