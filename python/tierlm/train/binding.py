"""What a unit's parameters point at: its flat host-tier buffer (computing in place), a copy
of it on the compute device, or stand-ins that own no memory while the unit is not needed;
and the choice of that compute device."""

import torch

from tierlm.errors import UnsupportedError


def released(shape, device=None):
    """A stand-in with the parameter's shape that owns no memory (stride 0)."""
    return torch.zeros((), dtype=torch.float32, device=device).expand(shape)


class Binding:
    """device: where blocks compute (None: in place in the host tier); root: the unit that
    stays materialised; counters: where device copies are counted."""

    def __init__(self, device, root, counters):
        self.device = device
        self.root = root
        self.counters = counters

    def releasable(self, u):
        """Whether u's parameters are materialised only around its forward and backward: a
        disk unit's (its host buffer too), and with a compute device every block's copy there.
        The root unit (embeddings, head: not wrapped) stays materialised."""
        return u.home == "disk" or (self.device is not None and u is not self.root)

    def bind(self, u):
        """Points each parameter's .data at its slice of the unit's flat buffer: the host-tier
        buffer itself (no copy), or with a compute device a copy made there."""
        flat = u.p_tensor
        if self.device is not None:
            flat = torch.empty(u.n_total, dtype=torch.float32, device=self.device)
            flat.copy_(u.p_tensor)
            self.counters.add("device_in", u.n_total * 4)
        u.compute = flat
        for p in u.params:
            p.data = u.slice(flat, p)

    def unbind(self, u):
        """Points u's parameters at stand-ins that own no memory; the compute copy goes."""
        for p in u.params:
            p.data = released(p.shape, self.device)
        u.compute = None

    def release(self, u):
        """Unbinds a releasable unit after use; a disk unit's host buffer goes too."""
        if not self.releasable(u) or u.compute is None:
            return
        self.unbind(u)
        if u.home == "disk":
            u.p = u.p_buf = u.p_tensor = None

    def refresh(self, u):
        """After u's step the host copy is the master: a resident device copy (the root's)
        is updated from it."""
        if self.device is not None and u.compute is not None:
            u.compute.copy_(u.p_tensor)
            self.counters.add("device_in", u.n_total * 4)


def compute_device(units, device):
    """The device blocks compute on, None for in place in the host tier (CPU models by
    default). Every parameter must be float32 and on the CPU or on that device."""
    params = [(n, p) for u in units for n, p in zip(u.names, u.params, strict=True)]
    for name, p in params:
        if p.dtype != torch.float32:
            raise UnsupportedError(
                f"offload: parameter {name} is {p.dtype}; the offload trainer trains float32 "
                "models (convert with model.float())"
            )
    if device is None:
        where = {p.device for _, p in params}
        if len(where) > 1:
            raise UnsupportedError(
                f"offload: the model's parameters are on {sorted(map(str, where))}; give it "
                "on one device (model.cpu() or model.cuda())"
            )
        device = next(iter(where))
        if device.type == "cpu":
            return None
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type not in ("cpu", "cuda"):
        raise UnsupportedError(
            f"offload: cannot compute on {device}; the compute device is the CPU or a CUDA "
            "GPU (device=None computes where the model's parameters are)"
        )
    for name, p in params:
        if p.device.type != "cpu" and p.device != device:
            raise UnsupportedError(
                f"offload: parameter {name} is on {p.device}, neither the CPU nor the compute "
                f"device {device}; move the model (model.cpu())"
            )
    return device


def move_buffers(model, device):
    """Buffers (rotary frequencies, masks) are small and stay on the compute device."""
    for module in model.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf is not None and buf.device != device:
                setattr(module, name, buf.to(device))
