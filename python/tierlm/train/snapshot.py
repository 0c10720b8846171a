"""What a training checkpoint holds of an offload trainer, and resume all or nothing.

save() gathers each owned unit's parameters and moments from its home (host buffers, or read
from disk) into train.checkpoint's atomic layout. resume() first checks the whole checkpoint
(manifest against this model, every file's length and CRC-32) and only then overwrites the
trainer's state, so a damaged checkpoint leaves the trainer exactly as it was.
"""

import os

import numpy as np

from tierlm.errors import CorruptError, InvalidArgumentError
from tierlm.train import checkpoint
from tierlm.train.disk_home import wait_all


def read_unit(trainer, u, state=True):
    """(params, m, v) of a unit as numpy arrays read from its home (m, v None without state,
    or when state=False for a disk unit)."""
    if u.home == "host":
        return u.p, u.m, u.v
    moments = trainer.moments
    _, p = trainer.staging.array(u.n_total, np.float32)
    futures = [u.ext_p.pread(p)]
    m = v = None
    if state and u.owns_state(trainer.dp.rank):
        _, m = trainer.staging.array(u.n_train, moments.numpy)
        _, v = trainer.staging.array(u.n_train, moments.numpy)
        futures += [u.ext_m.pread(m), u.ext_v.pread(v)]
    wait_all(futures)
    return p, m, v


def save(trainer, directory):
    """Writes params + AdamW state to directory/ckpt-<step>-<nonce>; see OffloadTrainer.save."""
    step = max(u.step for u in trainer.units)

    def payload(u):
        p, m, v = read_unit(trainer, u)
        parts = [p.view(np.uint8)]
        if m is not None:
            parts += [m.view(np.uint8), v.view(np.uint8)]
        return parts

    records = [
        dict(
            name=u.name,
            file=f"unit-{u.index:04d}.bin",
            n_train=u.n_train,
            n_total=u.n_total,
            params=u.names,
            step=u.step,
            has_state=bool(u.n_train),
        )
        for u in trainer.units
    ]
    meta = dict(
        format=checkpoint.FORMAT,
        version=checkpoint.VERSION,
        step=step,
        moments_dtype=trainer.moments.name,
        hyper=dict(trainer.hyper, betas=list(trainer.hyper["betas"])),
        world=trainer.dp.world,
        units=records,
    )
    owned = [(u, payload) for u in trainer.units if u.owner == trainer.dp.rank]
    return checkpoint.write(directory, f"ckpt-{step:08d}", meta, owned, trainer.dp)


def _file_bytes(u, itemsize):
    """Bytes of a unit's checkpoint file: params fp32, then exp_avg and exp_avg_sq."""
    return u.n_total * 4 + (2 * u.n_train * itemsize if u.n_train else 0)


def _check_manifest(trainer, meta, path):
    manifest = os.path.join(path, checkpoint.MANIFEST)
    if meta.get("moments_dtype") != trainer.moments.name:
        raise InvalidArgumentError(
            f"resume: {path} holds {meta.get('moments_dtype')} moments but this trainer "
            f"uses {trainer.moments.dtype}"
        )
    records = meta["units"]
    keys = ("name", "file", "n_total", "n_train", "step")
    if not isinstance(records, list) or any(
        not isinstance(r, dict) or any(k not in r for k in keys) for r in records
    ):
        raise CorruptError(f"resume: {manifest} has unit records without {', '.join(keys)}")
    if len(records) != len(trainer.units) or any(
        r["name"] != u.name or r["n_total"] != u.n_total or r["n_train"] != u.n_train
        for r, u in zip(records, trainer.units, strict=False)
    ):
        raise CorruptError(
            f"resume: {manifest} describes a different model "
            "(units, parameter sizes or trainable set differ)"
        )
    for where, step in [("its step", meta.get("step"))] + [(r["name"], r["step"]) for r in records]:
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise CorruptError(f"resume: {manifest}: {where} has an invalid step count {step!r}")


def resume(trainer, directory):
    """Loads the checkpoint LATEST points to into the trainer's homes; returns its step.

    Everything is checked before anything is overwritten: on a damaged or mismatched
    checkpoint the error names the file and the trainer is as it was. A failure while
    overwriting (an I/O error, a file changed since it was checked) leaves the trainer
    marked unusable until a resume succeeds, so it never trains on a mix of states."""
    meta, path = checkpoint.read_meta(directory)
    _check_manifest(trainer, meta, path)
    itemsize = trainer.moments.itemsize
    records = meta["units"]
    for r, u in zip(records, trainer.units, strict=True):
        checkpoint.verify_file(path, r, _file_bytes(u, itemsize))
    try:
        for r, u in zip(records, trainer.units, strict=True):
            _load_unit(trainer, u, checkpoint.read_file(path, r, _file_bytes(u, itemsize)))
            u.step = r["step"]
    except BaseException as error:
        trainer.mark_failed(
            f"resume from {path} failed while overwriting the state "
            f"({type(error).__name__}: {error}); the state is partly restored"
        )
        raise
    return meta["step"]


def _load_unit(trainer, u, data):
    """Overwrites u's parameters (and, where this rank owns them, its moments) at its home
    with a checkpoint file's bytes."""
    itemsize = trainer.moments.itemsize
    p_bytes = u.n_total * 4
    owner = u.owns_state(trainer.dp.rank)
    p = np.frombuffer(data, np.float32, u.n_total, 0)
    if u.home == "host":
        u.p[:] = p
        if owner:
            n = u.n_train
            u.m[:] = np.frombuffer(data, trainer.moments.numpy, n, p_bytes)
            u.v[:] = np.frombuffer(data, trainer.moments.numpy, n, p_bytes + n * itemsize)
        return
    _, arr = trainer.staging.array(u.n_total, np.float32)
    arr[:] = p
    futures = [u.ext_p.pwrite(arr)]
    if owner:
        half = u.n_train * itemsize
        _, s = trainer.staging.array(2 * half, np.uint8)
        s[:] = np.frombuffer(data, np.uint8, 2 * half, p_bytes)
        futures += [u.ext_m.pwrite(s[:half]), u.ext_v.pwrite(s[half:])]
    wait_all(futures)  # the buffers go back to the budget on return, before the next unit
