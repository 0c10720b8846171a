"""Offloaded fine-tuning: PyTorch does autograd, tierlm owns the memory of parameters and AdamW.

A model made of repeated blocks (a Hugging Face causal LM's decoder layers, or a list you give)
is split into units: one per block plus a root unit (embeddings, final norm, head). Each unit's
fp32 parameters and Adam moments have a home tier, host or disk, chosen under the budget:
when not everything fits, the disk blocks are spread evenly among the host blocks (so their
I/O overlaps the host blocks' compute too) and the budget keeps room for pipeline_depth disk
blocks in flight besides the one computing. A disk-homed block is read into a host-tier
staging buffer just before its forward, released after, read again for its (checkpointed)
recompute in backward; the next disk blocks' params (and in backward their moments) are
prefetched while the current one computes. As soon as a block's gradients are complete its
AdamW step runs on a background thread (fused native kernel, state read and written through
the I/O engine) while autograd continues with the earlier blocks (Fuyou's overlap).

The user's loop stays plain PyTorch::

    trainer = tierlm.train.offload(model, budget={"host": "4GiB"}, disk_dir="/nvme/state",
                                   lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    for batch in loader:
        loss = model(**batch).loss
        trainer.backward(loss)      # gradients are consumed (stepped) as backward goes
        trainer.step()              # waits for the last optimizer steps; stats for the step
        trainer.zero_grad()
    trainer.save("ckpt")            # atomic; trainer.resume("ckpt") restores params + Adam

With a compute device (a CUDA model, or device=...) PyTorch computes there: the root unit
stays resident on it, each block's parameters are copied in from their home tier before its
forward and its backward and dropped after, and each gradient is copied back to the host as
autograd finishes it; AdamW still runs on the host copies (the masters).

One trainer.backward per step (no gradient accumulation across micro-batches: each block is
stepped as soon as its gradients are complete). Parameter .grad tensors are not kept after
trainer.backward (each block's gradients go to the
optimizer and are freed). Frozen parameters (requires_grad=False, e.g. a LoRA base) are
streamed read-only and have no optimizer state. With torch.distributed initialised, gradients
are reduced to the rank that owns each unit's optimizer state, which steps it and broadcasts
the new parameters (ZeRO-1/2 style sharding of the offloaded state).

The parts, one module each under tierlm/train/: units (the flat layout of each unit),
placement (homes under the budget), binding (parameters on home buffers, device copies or
stand-ins), staging (host-tier buffers), prefetch, hooks (autograd), worker (the AdamW
thread), distributed, stats, snapshot + checkpoint (save / all-or-nothing resume), disk_home,
and trainer (OffloadTrainer, which wires them together).
"""

from tierlm.train.adamw import moments_dtype_of
from tierlm.train.placement import plan_units
from tierlm.train.stats import StepStats
from tierlm.train.trainer import OffloadTrainer
from tierlm.train.units import Moments, build_units, find_blocks


def offload(model, budget=None, disk_dir=None, **options):
    """Wraps model for offloaded AdamW fine-tuning; returns the OffloadTrainer.

    budget: {"host": size, "disk": size} (sizes as bytes or "4GiB"); disk_dir: where
    disk-homed state lives. Options: lr, betas, eps, weight_decay, blocks,
    checkpoint_activations (True), offload_activations (False), moments_dtype ("float32" or
    "bfloat16"), io_backend ("auto" | "uring" | "threads"), process_group, pipeline_depth
    (2: when blocks go to disk, the budget keeps room for this many disk blocks in flight
    beside the one computing -- prefetched, or being stepped and written back -- at the cost
    of fewer host-resident blocks; 0 packs the host tier fullest), device (None: compute where
    the model's parameters are -- a CPU model in place in the host tier, no copies; a CUDA
    model or device="cuda": the host/disk homes stay the masters and each block's parameters
    are copied to the device for its forward and again for its backward, gradients copied
    back for the CPU AdamW; device="cpu" makes those copies on the CPU).
    """
    return OffloadTrainer(model, budget=budget, disk_dir=disk_dir, **options)


def offload_plan(model, blocks=None, moments_dtype="float32"):
    """{"minimum": bytes, "all_host": bytes, ...}: host budgets for offload(model) (rank 0)."""
    return plan_units(build_units(model, blocks), Moments(moments_dtype_of(moments_dtype)).itemsize)


__all__ = ["OffloadTrainer", "StepStats", "find_blocks", "offload", "offload_plan"]
