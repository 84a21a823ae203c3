"""The pretraining loop: one readable file, DeepSpeed engine, open_clip's contrastive loss.

Launch with ``deepspeed`` or ``torchrun`` for several ranks/nodes; run as a plain process for one
rank (the CPU default). ZeRO stage, precision and batch come from the generated DeepSpeed config.

Resumption is exact: the data stream and the RNG are re-seeded from ``(seed, step)`` at every
checkpoint boundary, in an uninterrupted run too, so a run resumed from the checkpoint at step ``k``
sees the same batches, augmentations and dropout masks as the run that never stopped.
"""
from __future__ import annotations

import hashlib
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import deepspeed
import open_clip
import torch
from open_clip.loss import ClipLoss
from transformers import AutoTokenizer

from ..model.build import WEIGHTS_NAME, create_model, save_weights
from ..shards.loader import CaptionCollator, SkipCounter, train_batches
from .ds_config import TrainConfig, deepspeed_config, effective_zero_stage

MAX_LOGIT_SCALE = math.log(100.0)
LogFn = Callable[[int, dict[str, float]], None]
MicroBatch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class TrainSummary:
    steps: int
    resumed_from: int
    samples: int
    tokens: int
    seconds: float
    final_loss: float
    skipped_samples: int

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class StepResult:
    """Loss and logit scale stay device tensors: reading them waits for the GPU, so only do it to log."""

    loss_tensor: torch.Tensor
    logit_scale_tensor: torch.Tensor
    samples: int  # across all ranks
    tokens: int  # non-padding caption tokens across all ranks

    @property
    def loss(self) -> float:
        return float(self.loss_tensor)

    @property
    def logit_scale(self) -> float:
        return float(self.logit_scale_tensor.reshape(-1)[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> None:
    """Join the launcher's process group, or make a one-rank group when run as a plain process."""
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on gains, biases, norms and the logit scale (open_clip's rule)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        excluded = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if excluded else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; with optimizer offload on a GPU, DeepSpeed's fused CPU Adam (same maths, runs on the host)."""
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.offload_optimizer and torch.cuda.is_available():
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def build_engine(model: torch.nn.Module, cfg: TrainConfig, world_size: int) -> tuple[Any, Any]:
    """Wrap ``model`` in a DeepSpeed engine configured from ``cfg``; returns (engine, lr scheduler)."""
    # DeepSpeed cannot flatten 0-dim parameters; a 1-element logit scale behaves the same in the loss.
    model.logit_scale = torch.nn.Parameter(model.logit_scale.detach().reshape(1))
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    stage = effective_zero_stage(cfg, world_size)
    if stage != cfg.zero_stage:
        print(f"pretrain: ZeRO-{cfg.zero_stage} partitions nothing on one rank; running stage {stage} "
              "(same maths, less copying)", flush=True)
    engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=_optimizer(model, cfg),
                                                   config=deepspeed_config(cfg, world_size))
    return engine, scheduler


def contrastive_loss(world_size: int) -> ClipLoss:
    """open_clip's loss over the whole global batch, gradients flowing back through the gather."""
    rank = torch.distributed.get_rank() if world_size > 1 else 0
    return ClipLoss(local_loss=False, gather_with_grad=True, rank=rank, world_size=world_size)


def train_step(engine: Any, loss_fn: ClipLoss, micro_batches: Iterator[MicroBatch], accumulation: int,
               pad_token_id: int) -> StepResult:
    """One optimizer step over ``accumulation`` micro-batches, then the logit-scale clamp."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(_precision(engine), torch.float32)
    world = torch.distributed.get_world_size()
    samples = tokens = 0
    for _ in range(accumulation):
        images, texts = next(micro_batches)
        image_f, text_f, logit_scale = engine(images.to(engine.device, dtype), texts.to(engine.device))
        loss = loss_fn(image_f.float(), text_f.float(), logit_scale.float())
        engine.backward(loss)
        engine.step()
        samples += images.shape[0] * world
        tokens += int((texts != pad_token_id).sum()) * world  # ranks' batches are alike in length on average
    with deepspeed.zero.GatheredParameters([engine.module.logit_scale], modifier_rank=0), torch.no_grad():
        engine.module.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return StepResult(loss_tensor=loss.detach(), logit_scale_tensor=logit_scale.detach(), samples=samples, tokens=tokens)


def _precision(engine: Any) -> str:
    return "bf16" if engine.bfloat16_enabled() else "fp16" if engine.fp16_enabled() else "fp32"


def save_consolidated(engine: Any, model_dir: Path) -> None:
    """Gather every (ZeRO-3 partitioned) parameter and let rank 0 write full fp32 open_clip weights."""
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        if torch.distributed.get_rank() == 0:
            save_weights(engine.module, model_dir)
    torch.distributed.barrier()


def segment_seed(seed: int, step: int) -> int:
    """The seed of the data/RNG segment that starts at ``step`` (distinct for every (seed, step))."""
    return int.from_bytes(hashlib.sha256(f"{seed}@{step}".encode()).digest()[:4], "big")


def segments(start: int, steps: int, every: int) -> Iterator[tuple[int, int]]:
    """``[begin, end)`` step ranges cut at every checkpoint boundary: the unit of exact resumption."""
    begin = start
    while begin < steps:
        end = min(steps, (begin // every + 1) * every) if every else steps
        yield begin, end
        begin = end


_TAG = "step"  # DeepSpeed checkpoint tags: step<N>; its ``latest`` file names the newest


def checkpoint_step(checkpoint_dir: Path) -> int:
    """The step the newest checkpoint in ``checkpoint_dir`` holds (0: none), i.e. where a run resumes."""
    latest = checkpoint_dir / "latest"
    return int(latest.read_text().strip().removeprefix(_TAG)) if latest.is_file() else 0


def pretrain(model_dir: Path, shard_dir: Path, checkpoint_dir: Path, cfg: TrainConfig,
             log: LogFn | None = None) -> TrainSummary:
    """Train the model in ``model_dir`` on the train shards; writes its weights back to ``model_dir``.

    Starts from the weights already in ``model_dir`` when it has them (continued pretraining, or a
    pretrained text tower laid in by ``init_model_dir``), from a seeded random init otherwise.
    """
    init_distributed()
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    torch.manual_seed(cfg.seed)
    model = create_model(model_dir, load_weights=(model_dir / WEIGHTS_NAME).is_file())
    engine, scheduler = build_engine(model, cfg, world)
    start, loss_value = 0, float("nan")
    if (checkpoint_dir / "latest").is_file():
        _, client_state = engine.load_checkpoint(str(checkpoint_dir))
        start, loss_value = int(client_state["step"]), float(client_state.get("loss", "nan"))

    preprocess = open_clip.image_transform(model.visual.image_size, is_train=True,
                                           mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    collate = CaptionCollator(tokenizer, tokenizer.model_max_length)  # the context length (init_model_dir)
    skips = SkipCounter()  # counts what the main process decodes (num_workers=0); workers log theirs
    loss_fn = contrastive_loss(world)

    samples = tokens = 0
    t0 = time.perf_counter()
    for begin, end in segments(start, cfg.steps, cfg.checkpoint_every):
        torch.manual_seed(segment_seed(cfg.seed, begin))
        batches = train_batches(shard_dir, preprocess, collate, cfg.micro_batch_size, seed=segment_seed(cfg.seed, begin),
                                rank=rank, num_workers=cfg.num_workers, prefetch_factor=cfg.prefetch_factor, skips=skips)
        micro_batches = ((images, texts) for images, texts, _ in batches)
        for done in range(begin + 1, end + 1):
            t_step = time.perf_counter()
            result = train_step(engine, loss_fn, micro_batches, cfg.gradient_accumulation_steps,
                                tokenizer.pad_token_id)
            samples, tokens = samples + result.samples, tokens + result.tokens
            if log and rank == 0 and (done % cfg.log_every == 0 or done == cfg.steps):
                elapsed = time.perf_counter() - t0
                log(done, {"loss": result.loss, "lr": scheduler.get_last_lr()[0], "logit_scale": result.logit_scale,
                           "step_time_s": time.perf_counter() - t_step, "samples_per_s": samples / elapsed,
                           "tokens_per_s": tokens / elapsed})
        loss_value = result.loss  # one wait for the GPU per segment, not per step
        if cfg.checkpoint_every:
            engine.save_checkpoint(str(checkpoint_dir), tag=f"{_TAG}{end}",
                                   client_state={"step": end, "loss": loss_value})
    seconds = time.perf_counter() - t0
    save_consolidated(engine, model_dir)
    return TrainSummary(steps=cfg.steps, resumed_from=start, samples=samples, tokens=tokens, seconds=seconds,
                        final_loss=loss_value, skipped_samples=skips.skipped)
