"""tierlm.train: fused native AdamW and offloaded fine-tuning (see tierlm.train.offload)."""

from tierlm.train.adamw import AdamW, adam_step
from tierlm.train.offload import OffloadTrainer, find_blocks, offload, offload_plan

__all__ = ["AdamW", "OffloadTrainer", "adam_step", "find_blocks", "offload", "offload_plan"]
