"""Where training runs: the device, DistributedDataParallel's process group (gloo on CPU,
nccl on GPU, under ``torchrun``), bf16 autocast on CUDA, the per-(seed, epoch) random
generators that make runs deterministic, and the weights' digest that shows every rank
holds the same model."""

from __future__ import annotations

import hashlib
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from .errors import UsageError


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def autocast(device: torch.device):
    """bf16 autocast on CUDA (convolutions and matmuls; the neurons' comparisons stay in the
    tensors' dtype); full fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + salt)


def param_digest(model: nn.Module) -> str:
    """Hash of the trainable weights (BatchNorm's running statistics are per-rank buffers:
    DDP re-broadcasts them from rank 0 before each forward, and checkpoints store rank 0's)."""
    h = hashlib.sha256()
    for _, value in sorted(getattr(model, "module", model).named_parameters()):
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
