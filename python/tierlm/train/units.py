"""Units of offloaded training: the root (embeddings, final norm, head) and one per repeated
block, each with its parameters laid out in one flat fp32 buffer and its AdamW moments in the
moments dtype, and the host-tier bytes a unit needs resident or in flight."""

import numpy as np
import torch

from tierlm.errors import InvalidArgumentError
from tierlm.sizes import round_up
from tierlm.tiers import PAGE

ALIGN_ELEMS = 16  # each parameter starts on a 64-byte line inside its unit's flat buffer
PAGE_ELEMS = PAGE // 4  # unit regions are page-aligned, so disk reads are O_DIRECT-able


def pages(nbytes):
    return round_up(nbytes, PAGE)


class Moments:
    """The dtype of the Adam moments (float32 or bfloat16), as numpy stores and torch reads it."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.itemsize = 2 if dtype == torch.bfloat16 else 4
        self.numpy = np.uint16 if self.itemsize == 2 else np.float32  # bf16 as bit patterns
        self.name = str(dtype).replace("torch.", "")

    def torch(self, arr):
        t = torch.from_numpy(arr)
        return t.view(torch.bfloat16) if self.itemsize == 2 else t


class Unit:
    """One block (or the root): its parameters laid out in one flat fp32 buffer, trainable
    ones first (the optimizer's range, [0, n_train)), then the frozen ones."""

    def __init__(self, index, name, module, entries):
        self.index = index
        self.name = name
        self.module = module
        self.train = [(n, p) for n, p in entries if p.requires_grad]
        self.frozen = [(n, p) for n, p in entries if not p.requires_grad]
        self.offsets = {}
        pos = 0
        for _, p in self.train:
            self.offsets[id(p)] = pos
            pos = round_up(pos + p.numel(), ALIGN_ELEMS)
        self.n_train = round_up(pos, PAGE_ELEMS)
        # [a, b) ranges of the flat gradient no trainable parameter covers (alignment padding)
        self.gaps = []
        pos = 0
        for _, p in self.train:
            if self.offsets[id(p)] > pos:
                self.gaps.append((pos, self.offsets[id(p)]))
            pos = self.offsets[id(p)] + p.numel()
        if self.n_train > pos:
            self.gaps.append((pos, self.n_train))
        pos = self.n_train
        for _, p in self.frozen:
            self.offsets[id(p)] = pos
            pos = round_up(pos + p.numel(), ALIGN_ELEMS)
        self.n_total = round_up(pos, PAGE_ELEMS)
        self.params = [p for _, p in self.train] + [p for _, p in self.frozen]
        self.names = [n for n, _ in self.train] + [n for n, _ in self.frozen]
        self.home = "host"
        self.owner = 0  # the rank that holds its optimizer state
        self.step = 0
        # Materialised state (numpy views of host-tier buffers).
        self.p = None  # flat fp32 [n_total]
        self.p_buf = None
        self.p_tensor = None  # torch view of p
        # What the parameters are views of while materialised: p_tensor itself, or a copy of
        # it on the compute device.
        self.compute = None
        self.g = None
        self.g_buf = None
        self.m = self.v = None
        self.m_buf = self.v_buf = None
        self.ext_p = self.ext_m = self.ext_v = None
        self.prefetch = None  # (buffer, array, future) of p
        self.mv_prefetch = None  # (m_buf, m, v_buf, v, futures)
        self.fired = set()  # ids of the trainable parameters whose gradient arrived this step
        self.submitted = False

    def slice(self, flat, param):
        """param's view of a flat buffer laid out like this unit."""
        off = self.offsets[id(param)]
        return flat[off : off + param.numel()].view(param.shape)

    def fill(self, arr):
        """Copies the parameters' current values into arr (the unit's layout, gaps zero)."""
        arr[:] = 0
        flat = torch.from_numpy(arr)
        for p in self.params:
            off = self.offsets[id(p)]
            flat[off : off + p.numel()].copy_(p.detach().reshape(-1))

    def owns_state(self, rank):
        """Whether rank holds this unit's Adam moments (there are none without trainables)."""
        return bool(self.n_train) and self.owner == rank

    def host_bytes(self, itemsize, rank):
        """Bytes the unit holds in the host tier when its home is host."""
        total = pages(self.n_total * 4)
        if self.owns_state(rank):
            total += 2 * pages(self.n_train * itemsize)
        return total

    def transient_bytes(self, itemsize, rank):
        """Bytes a disk-homed unit needs in the host tier while in backward and stepped."""
        return self.host_bytes(itemsize, rank) + pages(self.n_train * 4)


def find_blocks(model):
    """The longest nn.ModuleList whose children are all of one class (the decoder layers)."""
    best = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            kinds = {type(child) for child in module}
            if len(kinds) == 1 and (best is None or len(module) > len(best[1])):
                best = (name, module)
    if best is None:
        raise InvalidArgumentError(
            "offload: found no nn.ModuleList of repeated blocks in the model; pass "
            "blocks=[...] (the modules to stream one at a time)"
        )
    return list(best[1])


def build_units(model, blocks=None):
    """[root, block0, block1, ...]: each block's parameters (a parameter shared between
    blocks goes to the first), the rest of the model's to the root."""
    blocks = list(blocks) if blocks is not None else find_blocks(model)
    if not blocks:
        raise InvalidArgumentError("offload: blocks is empty")
    names = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), n)
    seen = set()
    block_entries = []
    for block in blocks:
        entries = []
        for p in block.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            entries.append((names.get(id(p), f"?{len(entries)}"), p))
        block_entries.append((block, entries))
    root_entries = []
    for n, p in model.named_parameters():
        if id(p) not in seen:
            seen.add(id(p))
            root_entries.append((n, p))
    units = [Unit(0, "root", model, root_entries)]
    for i, (block, entries) in enumerate(block_entries):
        units.append(Unit(i + 1, f"block{i}", block, entries))
    return units
