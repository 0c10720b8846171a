"""A checkpoint save that cannot write (full disk: EFBIG under RLIMIT_FSIZE, or ENOSPC / EIO
injected with TIERLM_FAULT) names the file, removes what it wrote and leaves LATEST and the
previous checkpoint byte for byte as they were; resume then loads the previous one."""

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys

import pytest
import tierlm.train as tt
import torch
from train_helpers import HYPER, batches, llama

pytest.importorskip("transformers")
HERE = os.path.dirname(os.path.abspath(__file__))


def digest(path):
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def trained(steps=1):
    model = llama(layers=2)
    trainer = tt.offload(model, **HYPER)
    for batch in batches(model, steps):
        trainer.backward(model(input_ids=batch, labels=batch).loss)
        trainer.step()
    return model, trainer


def test_full_disk_during_save_keeps_the_previous_checkpoint(tmp_path):
    model, trainer = trained()
    ckpt = str(tmp_path / "ckpt")
    first = trainer.save(ckpt)
    state = {k: v.clone() for k, v in trainer.state_dict().items()}
    before = digest(ckpt)
    batch = batches(model, 1, seed=5)[0]
    trainer.backward(model(input_ids=batch, labels=batch).loss)
    trainer.step()
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, old[1]))
        with pytest.raises(OSError) as info:
            trainer.save(ckpt)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)
    message = str(info.value)
    assert f"checkpoint save to {ckpt} failed writing {ckpt}" in message, message
    assert "unit-0000.bin" in message and "RLIMIT_FSIZE" in message, message
    assert f"the previous checkpoint {first} (LATEST) is intact" in message, message
    assert digest(ckpt) == before  # nothing of the failed save is left
    assert trainer.resume(ckpt) == 1
    for name, value in trainer.state_dict().items():
        assert torch.equal(value, state[name]), name


@pytest.mark.parametrize(
    "spec,errno_name",
    [
        ("op=write,errno=ENOSPC,nth=2", "No space left on device"),
        ("op=fsync,errno=EIO,nth=1", "Input/output error"),
        ("op=write,errno=EIO,nth=4", "Input/output error"),
    ],
)
def test_injected_faults_name_the_file(tmp_path, spec, errno_name):
    model, trainer = trained()
    ckpt = str(tmp_path / "ckpt")
    trainer.save(ckpt)
    before = digest(ckpt)
    code = f"""
import sys
sys.path.insert(0, {HERE!r})
import test_train_checkpoint as t
model, trainer = t.trained(2)
try:
    trainer.save({ckpt!r})
except OSError as error:
    print(error)
    sys.exit(3)
"""
    env = dict(os.environ, TIERLM_FAULT=spec + ",path=/ckpt/")
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    fired = [line for line in proc.stderr.splitlines() if "TIERLM_FAULT injected" in line]
    assert len(fired) == 1, proc.stderr
    hit = fired[0].rsplit(" of ", 1)[1]
    message = proc.stdout.strip()
    assert f"failed writing {hit}: {errno_name}" in message, (message, hit)
    assert "(LATEST) is intact" in message
    assert digest(ckpt) == before
    with open(os.path.join(ckpt, "LATEST")) as f:
        assert json.load(open(os.path.join(ckpt, f.read().strip(), "manifest.json")))["step"] == 1
