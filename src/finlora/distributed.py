"""Data-parallel runs under `torchrun` / `accelerate launch`: who writes, and do all ranks agree.

HF `Trainer` does the distributed work itself (DDP; NCCL on GPUs, gloo on CPU). This module
holds the few facts `train()` needs around it. `--batch_size` is per device (the HF
convention): one optimizer step sees batch_size x gradient_accumulation_steps x world_size
examples.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch
import torch.distributed as dist

from finlora.data import PreparedData
from finlora.errors import FinloraError


def world_size() -> int:
    """Number of processes in the job (set by the launcher; 1 when run plainly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Only global rank 0 writes artifacts; the others train and exit."""
    return rank() == 0


def ddp_backend() -> str | None:
    """NCCL between GPUs, gloo between CPU processes; None in a single process."""
    if world_size() == 1:
        return None
    return "nccl" if torch.cuda.is_available() else "gloo"


def batch_layout(per_device: int, accumulation_steps: int) -> dict:
    """The `distributed` block of final_results.json."""
    size = world_size()
    return {
        "world_size": size,
        "backend": ddp_backend(),
        "per_device_batch_size": per_device,
        "gradient_accumulation_steps": accumulation_steps,
        "global_batch_size": per_device * accumulation_steps * size,
    }


def data_fingerprint(data: PreparedData, weights: list[float] | None) -> str:
    """A short hash of the label order, the three splits and the class weights."""
    splits = {
        name: [list(getattr(data, name)["text"]), data.label_ids(name)]
        for name in ("train", "validation", "test")
    }
    text = json.dumps([data.labels, splits, weights])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def check_same_data_on_all_ranks(data: PreparedData, weights: list[float] | None) -> None:
    """Fail on every rank if any rank prepared different splits or class weights.

    Every rank reads, de-duplicates and splits the data itself (same files, same seed);
    this makes sure that really gave the same result instead of ranks silently training
    on different data. Needs the process group, so call it after the Trainer exists.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    digests: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, data_fingerprint(data, weights))
    differing = [r for r, digest in enumerate(digests) if digest != digests[0]]
    if differing:
        raise FinloraError(
            f"rank(s) {differing} prepared different data splits or class weights than rank 0; "
            "every rank must read the same files (a shared file system) with the same settings"
        )
