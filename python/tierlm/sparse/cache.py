"""Python face of the native neuron cache, window and sparse FFN kernel
(cpp/include/tierlm/sparse/neuron_cache.hpp, kernels/sparse_ffn.hpp)."""

import numpy as np

from tierlm import _core
from tierlm.errors import InvalidArgumentError
from tierlm.quant import BLOCKS

_WORD = {"f32": np.float32, "f16": np.uint16, "bf16": np.uint16}


def _ids(a):
    return np.ascontiguousarray(a, dtype=np.int32).reshape(-1)


def _words(rows, dtype):
    """Rows as the native kernel takes them: float32, 16-bit words for f16/bf16, or a block
    type's bytes (uint8 [n, row bytes])."""
    rows = np.asarray(rows)
    if dtype in BLOCKS:
        if rows.dtype != np.uint8:
            raise InvalidArgumentError(
                f"{dtype} rows are the bytes of their blocks (uint8 [n, row bytes]), got "
                f"{rows.dtype}"
            )
        return np.ascontiguousarray(rows)
    if dtype == "f16" and rows.dtype == np.float16:
        rows = rows.view(np.uint16)
    return np.ascontiguousarray(rows, dtype=_WORD[dtype])


class NeuronCache:
    """One FFN layer's bundled rows, preallocated in a HostTier: insert appends, erase moves
    the last rows into the holes; capacity never changes and counts against the budget."""

    def __init__(self, tier, n_neurons, capacity, row_elems, dtype="f32"):
        native_tier = getattr(tier, "_native", tier)
        self._native = _core.NeuronCache(native_tier, n_neurons, capacity, row_elems, dtype)
        self.dtype = dtype

    def insert(self, neurons, rows):
        ids = _ids(neurons)
        rows = _words(rows, self.dtype)
        if rows.ndim != 2:
            rows = rows.reshape(ids.size, -1)
        self._native.insert(ids, rows)

    def erase(self, neurons):
        self._native.erase(_ids(neurons))

    def clear(self):
        self._native.clear()

    def neurons(self):
        return self._native.neurons()

    def rows(self):
        rows = self._native.rows()
        return rows.view(np.float16) if self.dtype == "f16" else rows

    def slot_of(self, neuron):
        return self._native.slot_of(int(neuron))

    def __contains__(self, neuron):
        return int(neuron) in self._native

    def __len__(self):
        return self._native.size

    def __getattr__(self, name):  # size, capacity, n_neurons, row_elems, row_bytes, ...
        return getattr(self._native, name)

    def ffn(
        self,
        x,
        dim,
        up_bias=None,
        down_bias=None,
        gated=False,
        gate_bias=None,
        slots=None,
        level=None,
    ):
        """The sparse FFN over the cached rows (or the given slots) for one token x [dim]."""
        return sparse_ffn(
            x,
            self._native.rows(),
            dim,
            self.dtype,
            gated=gated,
            neurons=self.neurons(),
            up_bias=up_bias,
            gate_bias=gate_bias,
            down_bias=down_bias,
            slots=slots,
            level=level,
        )


class NeuronWindow:
    """Union of the neurons active over the last k tokens; step() -> (to_load, to_evict)."""

    def __init__(self, n_neurons, k=4):
        self._native = _core.NeuronWindow(n_neurons, k)

    def step(self, active):
        return self._native.step(_ids(active))

    def reset(self):
        self._native.reset()

    def __contains__(self, neuron):
        return int(neuron) in self._native

    def __len__(self):
        return self._native.size

    def __getattr__(self, name):  # size, k, n_neurons, tokens
        return getattr(self._native, name)


def _f32(a):
    return None if a is None else np.ascontiguousarray(a, dtype=np.float32).reshape(-1)


def sparse_ffn(
    x,
    rows,
    dim,
    dtype="f32",
    gated=False,
    neurons=None,
    up_bias=None,
    gate_bias=None,
    down_bias=None,
    slots=None,
    level=None,
):
    """y = down_bias + sum_r act(x·up_r + up_bias[n_r]) * down_r over bundled rows
    [n_rows, >= 2*dim] (3*dim gated: silu(x·gate + gate_bias) * (x·up + up_bias))."""
    return _core.sparse_ffn(
        _f32(x),
        _words(rows, dtype),
        dtype,
        dim,
        gated,
        None if neurons is None else _ids(neurons),
        _f32(up_bias),
        _f32(gate_bias),
        _f32(down_bias),
        None if slots is None else _ids(slots),
        level,
    )
