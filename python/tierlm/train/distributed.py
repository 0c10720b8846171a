"""Data parallel offload over torch.distributed: unit i's optimizer state lives on rank
i % world; its gradient is reduced to that rank, which steps it and broadcasts the new
parameters (ZeRO-1/2 style). All of it moves host tensors, so over gloo."""

import time

import torch


class DataParallel:
    """The ranks of process_group (the default group when None), or one rank when
    torch.distributed is not initialised."""

    def __init__(self, process_group=None):
        dist = torch.distributed
        initialised = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank(process_group) if initialised else 0
        self.world = dist.get_world_size(process_group) if initialised else 1
        many = self.world > 1
        # The user's group when it is gloo, else (NCCL) a gloo group beside it. The optimizer
        # thread's broadcasts get a group of their own (one thread per group).
        gloo = many and dist.get_backend(process_group) == "gloo"
        self.group = process_group if not many or gloo else dist.new_group(backend="gloo")
        self.job_group = dist.new_group(backend="gloo") if many else None

    @property
    def many(self):
        return self.world > 1

    def owner_of(self, index):
        return index % self.world

    def reduce_to_owner(self, grad, owner):
        """Averages grad (a host tensor) over the ranks onto owner; returns the seconds."""
        if not self.many:
            return 0.0
        t0 = time.perf_counter()
        torch.distributed.reduce(grad, dst=owner, group=self.group)
        grad.div_(self.world)
        return time.perf_counter() - t0

    def broadcast_from_owner(self, params, owner):
        """From the optimizer thread: owner's new parameters to every rank."""
        if self.many:
            torch.distributed.broadcast(params, src=owner, group=self.job_group)

    def agree(self, value):
        """Rank 0's value, on every rank."""
        if not self.many:
            return value
        box = [value if self.rank == 0 else None]
        torch.distributed.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def merge(self, mapping):
        """The union of every rank's dict."""
        if not self.many:
            return dict(mapping)
        gathered = [None] * self.world
        torch.distributed.all_gather_object(gathered, mapping, group=self.group)
        merged = {}
        for g in gathered:
            merged.update(g)
        return merged

    def barrier(self):
        if self.many:
            torch.distributed.barrier(group=self.group)
