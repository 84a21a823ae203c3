"""Generate the DeepSpeed config from the pretrain params (one source of truth: params.yaml)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ParamsError


@dataclass(frozen=True)
class TrainConfig:
    seed: int
    steps: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    lr: float
    warmup_steps: int
    weight_decay: float
    betas: tuple[float, float]
    eps: float
    grad_clip: float
    precision: str
    zero_stage: int
    log_every: int
    checkpoint_every: int
    num_workers: int
    prefetch_factor: int = 2
    grad_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more compute
    offload_optimizer: bool = False  # ZeRO-Offload: optimizer state and step on the host (stage >= 1)


def effective_zero_stage(cfg: TrainConfig, world_size: int) -> int:
    """``cfg.zero_stage``, except 0 for ZeRO-1/2 on one rank without offload.

    Partitioning optimizer state and gradients across one rank saves no memory, and on a small
    model its flat-buffer copies cost ~6% of the step (benchmarks/train.py). Stage 3 (parameter
    partitioning and its consolidation) and offload are kept as asked.
    """
    if world_size == 1 and cfg.zero_stage in (1, 2) and not cfg.offload_optimizer:
        return 0
    return cfg.zero_stage


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON config for ``cfg`` on ``world_size`` ranks."""
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "train_batch_size": cfg.micro_batch_size * cfg.gradient_accumulation_steps * world_size,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": effective_zero_stage(cfg, world_size), **_offload(cfg)},
        # Without a GPU the host *is* the device: torch's AdamW is the CPU optimizer, no compile needed.
        "zero_force_ds_cpu_optimizer": torch.cuda.is_available(),
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": cfg.precision == "fp16", "initial_scale_power": 16},
        "scheduler": {"type": "WarmupCosineLR", "params": {
            "total_num_steps": cfg.steps, "warmup_num_steps": max(1, cfg.warmup_steps),
            "warmup_min_ratio": 0.0, "cos_min_ratio": 0.0, "warmup_type": "linear"}},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _offload(cfg: TrainConfig) -> dict[str, Any]:
    if not cfg.offload_optimizer:
        return {}
    if cfg.zero_stage == 0:
        raise ParamsError("params: 'pretrain.offload_optimizer' needs 'pretrain.zero_stage' 1, 2 or 3")
    return {"offload_optimizer": {"device": "cpu", "pin_memory": torch.cuda.is_available()}}
