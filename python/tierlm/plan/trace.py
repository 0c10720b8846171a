"""Buffers of a PyTorch step, for planning training: a dispatch mode sees every op, notes
each storage an op creates, and a weakref finalizer on the storage notes when it dies. Works
on CPU; lifetimes are in op indices, the planner's time."""

import weakref
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Trace:
    """Storages created while tracing: size, first op (its creator), last op before it died."""

    sizes: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    names: list  # the op that created each storage, e.g. "aten.mm.default#12"
    num_ops: int
    ops: list = field(default_factory=list)  # op names in order

    def __iter__(self):  # solve(*trace_torch(...)) works
        return iter((self.sizes, self.starts, self.ends))

    def __len__(self):
        return len(self.sizes)


def trace_torch(fn, *args, **kwargs):
    """Runs fn(*args, **kwargs) (e.g. a forward and a backward) and returns its Trace.

    Storages alive before the call (inputs, parameters) are not counted; storages still alive
    when it returns (outputs, gradients) live until the last op.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    records = []  # [size, start, end or None, name]
    live = {}  # StorageImpl address -> record index
    ops = []

    def died(key, index):
        if live.get(key) == index:
            del live[key]
        records[index][2] = max(records[index][1], len(ops) - 1)

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            inputs = {
                t.untyped_storage()._cdata
                for t in tree_leaves((args, kwargs))
                if isinstance(t, torch.Tensor) and t.layout == torch.strided
            }
            out = func(*args, **kwargs)
            ops.append(str(func))
            t_now = len(ops) - 1
            for t in tree_leaves(out):
                if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
                    continue
                storage = t.untyped_storage()
                key = storage._cdata
                if key in inputs or key in live or storage.nbytes() == 0:
                    continue
                index = len(records)
                records.append([storage.nbytes(), t_now, None, f"{func}#{t_now}"])
                live[key] = index
                weakref.finalize(storage, died, key, index)
            return out

    with Recorder():
        fn(*args, **kwargs)
    last = max(len(ops) - 1, 0)
    for index in live.values():
        if records[index][2] is None:
            records[index][2] = last
    sizes = np.array([r[0] for r in records], dtype=np.int64)
    starts = np.array([r[1] for r in records], dtype=np.int64)
    ends = np.array([last if r[2] is None else r[2] for r in records], dtype=np.int64)
    return Trace(sizes, starts, ends, [r[3] for r in records], len(ops), ops)
