"""A checkpoint save that cannot write (a full disk: EFBIG under RLIMIT_FSIZE) names the file,
removes what it wrote and leaves LATEST and the previous checkpoint byte for byte as they were;
resume then loads the previous one. Injected ENOSPC / EIO on every write and fsync of a save:
test_faults.py and fault_sweep.py (scenario checkpoint_save)."""

import resource
import signal

import pytest
import tierlm.train as tt
import torch
from fault_sweep import digest
from train_helpers import HYPER, batches, llama

pytest.importorskip("transformers")


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
