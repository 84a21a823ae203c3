"""The pretraining loop: one readable file, DeepSpeed engine, open_clip's contrastive loss.

Launch with ``deepspeed`` or ``torchrun`` for several ranks/nodes; run as a plain process for one
rank (the CPU default). ZeRO stage, precision and batch come from the generated DeepSpeed config.
"""
from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import deepspeed
import open_clip
import torch
from open_clip.loss import ClipLoss
from transformers import AutoTokenizer

from ..model.build import create_model, save_weights
from ..shards.loader import CaptionCollator, SkipCounter, train_batches
from .ds_config import TrainConfig, deepspeed_config

MAX_LOGIT_SCALE = math.log(100.0)
LogFn = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainSummary:
    steps: int
    resumed_from: int
    samples: int
    seconds: float
    final_loss: float
    skipped_samples: int

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0


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


def _vectorise_logit_scale(model: torch.nn.Module) -> None:
    """DeepSpeed cannot flatten 0-dim parameters; a 1-element one behaves the same in the loss."""
    model.logit_scale = torch.nn.Parameter(model.logit_scale.detach().reshape(1))


def pretrain(model_dir: Path, shard_dir: Path, checkpoint_dir: Path, cfg: TrainConfig,
             log: LogFn | None = None) -> TrainSummary:
    """Train the model in ``model_dir`` on the train shards; writes its weights back to ``model_dir``."""
    init_distributed()
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    torch.manual_seed(cfg.seed)
    model = create_model(model_dir, load_weights=False)
    _vectorise_logit_scale(model)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer,
                                                   config=deepspeed_config(cfg, world))
    start = 0
    if (checkpoint_dir / "latest").is_file():
        _, client_state = engine.load_checkpoint(str(checkpoint_dir))
        start = int(client_state["step"])

    image_size = model.visual.image_size
    preprocess = open_clip.image_transform(image_size, is_train=True, mean=open_clip.OPENAI_DATASET_MEAN,
                                           std=open_clip.OPENAI_DATASET_STD)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    collate = CaptionCollator(tokenizer, tokenizer.model_max_length)  # the context length (init_model_dir)
    skips = SkipCounter()  # counts what the main process decodes (num_workers=0); workers log theirs
    batches = train_batches(shard_dir, preprocess, collate, cfg.micro_batch_size, seed=cfg.seed + start,
                            rank=rank, num_workers=cfg.num_workers, prefetch_factor=cfg.prefetch_factor, skips=skips)
    loss_fn = ClipLoss(local_loss=False, gather_with_grad=True, rank=rank, world_size=world)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision, torch.float32)

    samples, loss_value, t0 = 0, float("nan"), time.perf_counter()
    for step in range(start, cfg.steps):
        t_step = time.perf_counter()
        for _ in range(cfg.gradient_accumulation_steps):
            images, tokens, _ = next(batches)
            image_f, text_f, logit_scale = engine(images.to(engine.device, dtype), tokens.to(engine.device))
            loss = loss_fn(image_f.float(), text_f.float(), logit_scale.float())
            engine.backward(loss)
            engine.step()
            samples += images.shape[0] * world
        loss_value = loss.item()
        with deepspeed.zero.GatheredParameters([engine.module.logit_scale], modifier_rank=0), torch.no_grad():
            engine.module.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        done = step + 1
        if log and (done % cfg.log_every == 0 or done == cfg.steps) and rank == 0:
            log(done, {"loss": loss_value, "lr": scheduler.get_last_lr()[0],
                       "logit_scale": float(logit_scale.detach().reshape(-1)[0]),
                       "step_time_s": time.perf_counter() - t_step,
                       "samples_per_s": samples / (time.perf_counter() - t0)})
        if cfg.checkpoint_every and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            engine.save_checkpoint(str(checkpoint_dir), tag=f"step{done}", client_state={"step": done})
    seconds = time.perf_counter() - t0
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        if rank == 0:
            save_weights(engine.module, model_dir)
    torch.distributed.barrier()
    return TrainSummary(steps=cfg.steps, resumed_from=start, samples=samples, seconds=seconds,
                        final_loss=loss_value, skipped_samples=skips.skipped)
