"""Per-layer rows (FFN inputs, packed labels) spilled to one raw file per layer and read back
in bounded chunks, so training predictors on many tokens holds one chunk in memory instead
of tokens x hidden x layers (150k tokens of SmolLM2 held 7 GB that way)."""

import tempfile
from pathlib import Path

import numpy as np

# Rows per chunk read back: 8192 rows of a 4096-wide f32 input are 128 MiB.
CHUNK_ROWS = 8192


class RowSpill:
    """Appends [rows, width] arrays of one dtype per layer to files in a private temporary
    directory (under `directory`, default the system's), and reads them back by row range.
    A context manager: the files are removed on exit."""

    def __init__(self, num_layers, width, dtype=np.float32, directory=None):
        self.width, self.dtype = int(width), np.dtype(dtype)
        self._dir = tempfile.TemporaryDirectory(prefix="tierlm-spill-", dir=directory)
        root = Path(self._dir.name)
        self.paths = [root / f"layer-{i}.bin" for i in range(num_layers)]
        self._files = [open(p, "wb") for p in self.paths]  # noqa: SIM115 (closed in close())
        self.rows = [0] * num_layers

    def append(self, layer, rows):
        rows = np.ascontiguousarray(rows, self.dtype).reshape(-1, self.width)
        self._files[layer].write(rows.tobytes())
        self.rows[layer] += rows.shape[0]

    def finish(self):
        """Flushes the writers; reads may follow."""
        for f in self._files:
            f.close()

    def read(self, layer, start, count):
        """Rows [start, start + count) of a layer (fewer at the end), a fresh array."""
        count = max(0, min(count, self.rows[layer] - start))
        row_bytes = self.width * self.dtype.itemsize
        out = np.fromfile(
            self.paths[layer], self.dtype, count * self.width, offset=start * row_bytes
        )
        if out.size != count * self.width:
            raise OSError(f"{self.paths[layer]}: short read of rows {start}..{start + count}")
        return out.reshape(count, self.width)

    def chunks(self, layer, chunk_rows=CHUNK_ROWS):
        """(start, rows) over a layer in order, chunk_rows at a time."""
        for start in range(0, self.rows[layer], chunk_rows):
            yield start, self.read(layer, start, chunk_rows)

    def close(self):
        for f in self._files:
            f.close()
        self._dir.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
