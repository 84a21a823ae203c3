"""open_clip's learning-rate schedule: linear warm-up from lr/warmup (never 0), then cosine to 0.

DeepSpeed's ``WarmupCosineLR`` starts at lr 0, so its first step trains nothing and every warm-up
step runs one step behind open_clip's. Here the factor for optimizer step ``i`` (0-based) is
open_clip's ``cosine_lr`` at ``i``, as a ``LambdaLR`` DeepSpeed steps once per optimizer step.
"""
from __future__ import annotations

import math

import torch


def lr_factor(step: int, warmup: int, steps: int) -> float:
    """The fraction of the base lr for optimizer step ``step`` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    if steps <= warmup:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))


def cosine_schedule(optimizer: torch.optim.Optimizer, warmup: int, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, steps))
