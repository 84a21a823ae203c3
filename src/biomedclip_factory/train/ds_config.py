"""Generate the DeepSpeed config from the pretrain params (one source of truth: params.yaml)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ParamsError
from ..params import Section


@dataclass(frozen=True)
class TextLayout:
    """How the text tower meets a micro-batch's captions: padded to the longest, in ``buckets`` length groups
    each padded to its own longest, or (``pack_width`` > 0) packed end to end into rows that wide."""

    buckets: int = 1
    pack_width: int = 0


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
    grad_clip: float | None  # None: no clipping (open_clip's default; the paper lists none)
    precision: str
    zero_stage: int
    log_every: int
    checkpoint_every: int
    num_workers: int
    prefetch_factor: int = 2
    grad_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more compute
    compile: bool = False  # torch.compile both towers (kernels fused; the maths unchanged up to rounding)
    text_buckets: int = 1  # length groups the text tower runs a micro-batch in, each padded to its own longest
    text_packing: bool = False  # captions packed end to end into rows of the context length (~1% pad tokens)
    offload_optimizer: bool = False  # ZeRO-Offload: optimizer state and step on the host (stage >= 1)
    lock_image: bool = False  # LiT: the image tower frozen (open_clip's --lock-image) ...
    lock_image_unlocked_groups: int = 0  # ... except its last N layer groups
    lock_text: bool = False  # the text tower's transformer frozen (--lock-text) ...
    lock_text_unlocked_layers: int = 0  # ... except its last N layers
    lock_text_freeze_layer_norm: bool = False  # ... LayerNorms frozen too (open_clip's default: they train)

    @classmethod
    def from_params(cls, p: Section, train_samples: int, world_size: int = 1) -> "TrainConfig":
        """The ``pretrain:`` section; ``epochs`` (the paper counts 32) becomes steps over ``train_samples``."""
        betas = p.get("betas", list)
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in betas):
            raise ParamsError(f"params: 'pretrain.betas' must be two numbers, got {betas!r}")
        micro, global_batch = p.positive("micro_batch_size"), p.get("global_batch_size", int, None)
        if global_batch is None:
            accumulation = p.positive("gradient_accumulation_steps")
        else:
            accumulation = accumulation_for(global_batch, micro, world_size,
                                            p.get("gradient_accumulation_steps", int, None))
        steps, epochs = p.get("steps", int, None), p.get("epochs", (int, float), None)
        if (steps is None) == (epochs is None):
            raise ParamsError("params: set one of 'pretrain.steps' and 'pretrain.epochs', the other null")
        if steps is None:
            if epochs <= 0:
                raise ParamsError(f"params: 'pretrain.epochs' must be > 0, got {epochs!r}")
            steps = max(1, math.ceil(epochs * train_samples / (micro * accumulation * world_size)))
        elif steps <= 0:
            raise ParamsError(f"params: 'pretrain.steps' must be > 0, got {steps!r}")
        if p.get("compile", bool, False) and p.get("zero_stage", int) == 3:
            raise ParamsError("params: 'pretrain.compile' is not supported with 'pretrain.zero_stage' 3 (its parameter "
                              "hooks run inside the compiled towers; untested): set zero_stage <= 2 or compile false")
        for key in ("warmup_steps", "lock_image_unlocked_groups", "lock_text_unlocked_layers"):
            if p.get(key, int, 0) < 0:
                raise ParamsError(f"params: 'pretrain.{key}' must be >= 0, got {p.get(key, int)!r}")
        grad_clip = p.get("grad_clip", (float, type(None)))  # required; null: no clipping
        if grad_clip is not None and grad_clip <= 0:
            raise ParamsError(f"params: 'pretrain.grad_clip' must be > 0, or null for no clipping, got {grad_clip!r}")
        if p.get("text_packing", bool, False) and p.positive("text_buckets", int, 1) > 1:
            raise ParamsError("params: set 'pretrain.text_packing' or 'pretrain.text_buckets' > 1, not both (packed "
                              "rows hold every length; groups would only split them)")
        return cls(
            seed=p.get("seed", int), steps=steps, micro_batch_size=micro, gradient_accumulation_steps=accumulation,
            lr=p.positive("lr", float), warmup_steps=p.get("warmup_steps", int), weight_decay=p.get("weight_decay", float),
            betas=(float(betas[0]), float(betas[1])), eps=p.positive("eps", float),
            grad_clip=grad_clip, precision=p.choice("precision", ("fp32", "bf16", "fp16")),
            zero_stage=p.choice("zero_stage", (0, 1, 2, 3), kind=int), log_every=p.positive("log_every"),
            checkpoint_every=p.get("checkpoint_every", int), num_workers=p.count("num_workers"),
            prefetch_factor=p.positive("prefetch_factor"), grad_checkpointing=p.get("grad_checkpointing", bool, False),
            text_buckets=p.positive("text_buckets", int, 1), text_packing=p.get("text_packing", bool, False),
            compile=p.get("compile", bool, False),
            offload_optimizer=p.get("offload_optimizer", bool, False), lock_image=p.get("lock_image", bool, False),
            lock_image_unlocked_groups=p.get("lock_image_unlocked_groups", int, 0),
            lock_text=p.get("lock_text", bool, False), lock_text_unlocked_layers=p.get("lock_text_unlocked_layers", int, 0),
            lock_text_freeze_layer_norm=p.get("lock_text_freeze_layer_norm", bool, False))

    def global_batch(self, world_size: int) -> int:
        """The pairs one optimizer step contrasts: micro-batch x accumulation x ranks."""
        return self.micro_batch_size * self.gradient_accumulation_steps * world_size

    def text_layout(self, context_length: int) -> TextLayout:
        """The layout ``train_step`` gives the text tower: packed rows are as wide as the context."""
        return TextLayout(buckets=self.text_buckets, pack_width=context_length if self.text_packing else 0)


def accumulation_for(global_batch: int, micro: int, world_size: int, given: int | None) -> int:
    """The accumulation that makes micro-batch × accumulation × ranks the contrastive batch asked for, so
    the paper's 4,096 negatives hold on 8 GPUs or on one; a batch that cannot be met is an error, not a
    smaller batch trained silently at the large batch's learning rate."""
    per_pass = micro * world_size
    if global_batch <= 0 or global_batch % per_pass:
        raise ParamsError(f"params: 'pretrain.global_batch_size' {global_batch} is not a multiple of "
                          f"micro_batch_size x ranks = {micro} x {world_size}: change micro_batch_size or the ranks")
    needed = global_batch // per_pass
    if given is not None and given != needed:
        raise ParamsError(f"params: 'pretrain.gradient_accumulation_steps' {given} makes a batch of {per_pass * given} "
                          f"on {world_size} rank(s), not global_batch_size {global_batch}: set it to {needed} or null")
    return needed


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
    """The DeepSpeed JSON config for ``cfg`` on ``world_size`` ranks.

    bf16/fp16 run as torch autocast over fp32 weights (open_clip_train's ``amp_bf16``; the paper says only
    "bf16"), not as DeepSpeed's low-precision weights: there the logit-scale clamp and the saved model
    touch a bf16 copy that the next step overwrites from a hidden fp32 master. Gradients are reduced in fp32 (no module is
    declared safe for low-precision communication), as DDP reduces them. The learning-rate
    schedule is open_clip's (``train.schedule``), handed to ``deepspeed.initialize`` as an object.
    """
    autocast = {"bf16": "bfloat16", "fp16": "float16"}.get(cfg.precision)
    if cfg.precision == "fp16" and effective_zero_stage(cfg, world_size) > 0:
        # DeepSpeed 0.19's ZeRO optimizers clip fp16-autocast gradients before unscaling them and
        # never lower the scale after an overflow: the update would be ~grad_clip / scale.
        raise ParamsError("params: 'pretrain.precision: fp16' trains correctly only without ZeRO partitioning "
                          "(one rank, no offload); use bf16 (the paper's precision) with ZeRO")
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "train_batch_size": cfg.global_batch(world_size),
        "gradient_clipping": cfg.grad_clip or 0.0,  # 0: DeepSpeed clips nothing
        "zero_optimization": {"stage": effective_zero_stage(cfg, world_size), **_offload(cfg)},
        # Without a GPU the host *is* the device: torch's AdamW is the CPU optimizer, no compile needed.
        "zero_force_ds_cpu_optimizer": torch.cuda.is_available(),
        "torch_autocast": {"enabled": autocast is not None, "dtype": autocast or "bfloat16",
                           "lower_precision_safe_modules": []},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # On by default, it synchronises the device at every forward and step: the host could then never
        # queue the next step's work while the GPU runs this one. Throughput is measured by the loop.
        "timers": {"throughput": {"enabled": False}},
    }


def _offload(cfg: TrainConfig) -> dict[str, Any]:
    if not cfg.offload_optimizer:
        return {}
    if cfg.zero_stage == 0:
        raise ParamsError("params: 'pretrain.offload_optimizer' needs 'pretrain.zero_stage' 1, 2 or 3")
    return {"offload_optimizer": {"device": "cpu", "pin_memory": torch.cuda.is_available()}}
