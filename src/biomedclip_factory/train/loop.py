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
import shutil
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import deepspeed
import torch
from deepspeed.utils import safe_get_local_fp32_param, safe_set_local_fp32_param
from open_clip.loss import ClipLoss
from transformers import AutoTokenizer

from ..errors import DivergedError
from ..io import write_bytes_atomic
from ..model.build import save_weights
from ..shards.loader import CaptionCollator, SkipCounter, SkipTally, bucket_cuts, train_batches
from ..shards.transform import to_model_input, train_image_transform
from .ds_config import TextLayout, TrainConfig, deepspeed_config, effective_zero_stage
from .packing import PackedCaptions, check_packable, pack_captions, packed_text_features
from .process_group import init_distributed, track_engine
from .schedule import cosine_schedule

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
    skipped_steps: int  # updates ZeRO refused for a non-finite gradient (the weights kept, the schedule moving on)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def metrics(self) -> dict[str, float]:
        return {"steps": self.steps, "resumed_from": self.resumed_from, "final_loss": self.final_loss,
                "samples_per_s": self.samples_per_s, "tokens_per_s": self.tokens_per_s,
                "skipped_samples": self.skipped_samples, "skipped_steps": self.skipped_steps}


@dataclass(frozen=True)
class StepResult:
    """Loss and logit scale stay device tensors: reading them waits for the GPU, so only do it to log."""

    loss_tensor: torch.Tensor
    logit_scale_tensor: torch.Tensor
    samples: int  # across all ranks
    tokens: int  # non-padding caption tokens across all ranks
    applied: bool = True  # False: a non-finite gradient, and no update

    @property
    def loss(self) -> float:
        return float(self.loss_tensor)

    @property
    def logit_scale(self) -> float:
        return float(self.logit_scale_tensor.reshape(-1)[0])


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


def lock_towers(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """open_clip's tower locking (LiT): a frozen tower, optionally its last N groups/layers left to train.

    The projections stay trainable, as in open_clip; frozen parameters get no optimizer state.
    """
    if cfg.lock_image:
        model.lock_image_tower(unlocked_groups=cfg.lock_image_unlocked_groups)
    if cfg.lock_text:  # open_clip's HFTextEncoder.lock, whose partial unlock has no BERT entry in open_clip 3.3
        bert = model.text.transformer
        stack = [bert.embeddings, *bert.encoder.layer]
        for module in stack[:-cfg.lock_text_unlocked_layers] if cfg.lock_text_unlocked_layers else [bert]:
            for name, p in module.named_parameters():  # a locked layer's LayerNorms train unless asked, as there
                p.requires_grad = "LayerNorm" in name.split(".") and not cfg.lock_text_freeze_layer_norm


def accept_text_layouts(model: torch.nn.Module) -> None:
    """Let the text tower take a batch's captions as ``length_buckets`` (a list of token tensors, each
    padded to its own longest) or ``PackedCaptions`` (end to end in rows), and return their features in
    the batch's order. BERT's attention mask makes a caption's features independent of its padding and
    of its row-mates, so either changes only the work done; a plain tensor goes through as before."""
    text = model.text
    plain = type(text).forward

    def forward(self: torch.nn.Module, x: torch.Tensor | list[torch.Tensor] | PackedCaptions) -> torch.Tensor:
        if isinstance(x, PackedCaptions):
            return packed_text_features(self, x)
        if isinstance(x, (list, tuple)):
            return torch.cat([plain(self, group) for group in x])
        return plain(self, x)

    text.forward = types.MethodType(forward, text)


def compile_towers(model: torch.nn.Module) -> None:
    """``torch.compile`` both towers in place (``nn.Module.compile``: parameter names, checkpoints and the
    saved model are unchanged). The text tower meets a new caption length in every length group, so its
    BERT is compiled for dynamic shapes rather than recompiled per length."""
    model.visual.compile()
    model.text.transformer.compile(dynamic=True)


def use_open_clips_cuda_math() -> None:
    """TF32 matmuls and cuDNN autotuning, as open_clip_train's main sets whenever CUDA is there (so the paper's
    runs had them): the fp32 work outside bf16 autocast (the loss's logits, an fp32 run) runs on tensor cores.
    These flags touch only CUDA kernels: CPU results stay bit-for-bit the same."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.deterministic = False


def build_engine(model: torch.nn.Module, cfg: TrainConfig, world_size: int) -> tuple[Any, Any]:
    """Wrap ``model`` in a DeepSpeed engine configured from ``cfg``; returns (engine, lr scheduler)."""
    use_open_clips_cuda_math()
    # Training mode, as open_clip's trainer sets every epoch: a text tower loaded with from_pretrained
    # arrives in eval mode, and would train without dropout (and skip checkpointing) on the rank that loaded it.
    model.train()
    lock_towers(model, cfg)
    if cfg.text_packing:
        check_packable(model.text)
    accept_text_layouts(model)
    # DeepSpeed cannot flatten 0-dim parameters; a 1-element logit scale behaves the same in the loss.
    model.logit_scale = torch.nn.Parameter(model.logit_scale.detach().reshape(1))
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if cfg.compile:
        compile_towers(model)
    stage = effective_zero_stage(cfg, world_size)
    if stage != cfg.zero_stage:
        print(f"pretrain: ZeRO-{cfg.zero_stage} partitions nothing on one rank; running stage {stage} "
              "(same maths, less copying)", flush=True)
    optimizer = _optimizer(model, cfg)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=cosine_schedule(optimizer, cfg.warmup_steps, cfg.steps),
        config=deepspeed_config(cfg, world_size))
    track_engine(engine)
    if stage == 0:
        if cfg.grad_clip is not None:
            clip_like_open_clip(engine, cfg.grad_clip)
        if world_size == 1:  # the mean over one rank is the gradient itself: skip DeepSpeed's flatten, all-reduce
            engine.enable_backward_allreduce = False  # and copy-back of every gradient, as open_clip runs one GPU
            # (that path also zero-fills a trainable parameter that got no gradient; every one of ours gets one)
    return engine, scheduler


def clip_like_open_clip(engine: Any, max_norm: float) -> None:
    """Clip stage 0's gradients with torch's ``clip_grad_norm_``, as open_clip's trainer does.

    DeepSpeed's own stage-0 clip builds two small tensors from host memory every step; each such copy
    waits for the GPU to finish the backward, so the host cannot queue the next step's kernels meanwhile.
    torch's does the same maths (one norm over all gradients, coefficient max_norm / (norm + 1e-6), at
    most 1) without leaving the device. The engine calls it where it called its own: at the accumulation
    boundary, after the gradients are averaged over ranks (identical on every rank, so the norm needs no
    collective) and unscaled, before the optimizer steps. ZeRO 1–3 keep DeepSpeed's, over their partitions.
    """
    trainable = [p for p in engine.module.parameters() if p.requires_grad]
    engine.clip_fp32_gradients = lambda: torch.nn.utils.clip_grad_norm_(trainable, max_norm)


def contrastive_loss(world_size: int) -> ClipLoss:
    """open_clip's loss over the global batch as the paper ran it (``--local-loss --gather-with-grad``).

    Each rank scores its own rows against every rank's columns (local × global logits) instead of
    building the whole global × global matrix on every rank; with the gather carrying gradients the
    averaged gradient is the full matrix's. Logits per rank, fp32, both directions: at a 4k global
    batch of 8 ranks × 512, 2 × 512 × 4096 × 4 B = 16 MB (full matrix: 2 × 67 MB); at 64k over 64
    ranks × 1024, 2 × 1024 × 65536 × 4 B = 0.5 GB (full matrix: 2 × 17 GB, on every rank).
    """
    rank = torch.distributed.get_rank() if world_size > 1 else 0
    return ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size)


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    torch.set_rng_state(state[0])
    if state[1]:
        torch.cuda.set_rng_state_all(state[1])


def train_step(engine: Any, loss_fn: ClipLoss, micro_batches: Iterator[MicroBatch], accumulation: int,
               pad_token_id: int, text_layout: TextLayout = TextLayout()) -> StepResult:
    """One optimizer step on ``accumulation`` micro-batches contrasted as one batch, then the clamp.

    Accumulating gradients of per-micro-batch losses would contrast each image with only a
    micro-batch of captions. Instead (open_clip's ``--accum-freq``, GradCache's idea) the features of
    every micro-batch are computed first without gradients; then each micro-batch runs again with
    gradients and its fresh features replace its cached ones in the full-batch loss, whose
    gradients summed over micro-batches are the full batch's. Each rerun restores the RNG its first
    pass used, so dropout draws the same masks. The logit scale's gradient is split over the passes
    so it adds up to the batch's once (open_clip's loop adds it whole from every pass). It costs one
    extra forward per micro-batch. ``text_layout`` says how the text tower meets the captions: padded
    together, in length groups (of length-sorted micro-batches) or packed end to end.
    """
    world = torch.distributed.get_world_size()
    host = [next(micro_batches) for _ in range(accumulation)]
    # Counted on the host copies: the same sum on the device would make every step wait for the GPU.
    tokens = sum(int((texts != pad_token_id).sum()) for _, texts in host) * world  # ranks alike on average
    samples = sum(images.shape[0] for images, _ in host) * world
    batches = [(to_model_input(images.to(engine.device, non_blocking=True)),
                _text_input(texts, engine.device, pad_token_id, text_layout)) for images, texts in host]
    cached: list[tuple[torch.Tensor, torch.Tensor]] = []
    states = []
    if accumulation > 1:
        with torch.no_grad():
            for images, texts in batches:
                states.append(_rng_state())
                image_f, text_f, _ = engine(images, texts)
                cached.append((image_f, text_f))
    for j, (images, texts) in enumerate(batches):
        if cached:
            _set_rng_state(states[j])
        image_f, text_f, logit_scale = engine(images, texts)
        if cached:
            image_f = torch.cat([image_f if k == j else c[0] for k, c in enumerate(cached)])
            text_f = torch.cat([text_f if k == j else c[1] for k, c in enumerate(cached)])
            # The scale enters every pass's loss whole: each pass carries 1/k of its gradient (same value,
            # k-th of the slope), so the sum is the batch's and every parameter gets a gradient at every
            # micro-step, which ZeRO-3's and ZeRO-Offload's accumulation buffers need to reset and keep it.
            logit_scale = logit_scale.detach() + (logit_scale - logit_scale.detach()) / len(batches)
        loss = loss_fn(image_f.float(), text_f.float(), logit_scale.float())
        engine.backward(loss, scale_wrt_gas=False)  # each pass's loss is the whole batch's already
        engine.step()
    applied = engine.was_step_applied()  # the host already knows: ZeRO's overflow check has synchronised
    if not applied:  # ZeRO skips an update whose gradient is not finite, and DeepSpeed holds the schedule back
        engine.lr_scheduler.step()  # open_clip sets the rate from the step's index: the schedule keeps its place
    clamp_logit_scale(engine)
    loss = loss.detach()
    if world > 1:  # each rank's loss covers its own rows; their mean is the global batch's (no host sync)
        torch.distributed.all_reduce(loss)
        loss /= world
    return StepResult(loss_tensor=loss, logit_scale_tensor=logit_scale.detach(), samples=samples, tokens=tokens,
                      applied=applied)


def _text_input(texts: torch.Tensor, device: torch.device, pad_token_id: int,
                layout: TextLayout) -> torch.Tensor | list[torch.Tensor] | PackedCaptions:
    """The batch's tokens on the device, laid out as ``layout`` says. Length groups are cut from one device
    copy and each made contiguous there (the compiled tower then meets the layout it was compiled for, not
    a view at an offset); packed rows go over as one pinned buffer."""
    if layout.pack_width:
        return pack_captions(texts, pad_token_id, layout.pack_width, device, pin=device.type == "cuda")
    on_device = texts.to(device, non_blocking=True)
    if layout.buckets <= 1:
        return on_device
    return [on_device[start:stop, :width].contiguous()
            for start, stop, width in bucket_cuts(texts, pad_token_id, layout.buckets)]


def clamp_logit_scale(engine: Any) -> None:
    """Clamp the logit scale to [0, log 100] in the optimizer's fp32 master as well as in the module.

    Under ZeRO the optimizer steps its own fp32 partition and copies it into the module, so a clamp
    of the module's copy alone is undone at the next step and the master drifts past log(100). The
    clamp is elementwise, so each rank clamps the fragment of the master it holds (DeepSpeed's
    full-parameter setter cannot place a 1-element parameter split over several ranks).
    """
    param = engine.module.logit_scale
    if hasattr(param, "ds_id"):  # ZeRO-3: this rank's partition of the master
        safe_set_local_fp32_param(param, safe_get_local_fp32_param(param).clamp(0, MAX_LOGIT_SCALE))
    elif getattr(param, "_hp_mapping", None) is not None:  # ZeRO-1/2: this rank's fragment, if any
        param._hp_mapping.get_hp_fragment().data.clamp_(0, MAX_LOGIT_SCALE)
    with deepspeed.zero.GatheredParameters([param], modifier_rank=0), torch.no_grad():
        param.clamp_(0, MAX_LOGIT_SCALE)


def save_consolidated(engine: Any, model_dir: Path) -> None:
    """Gather every (ZeRO-3 partitioned) parameter and let rank 0 write full fp32 open_clip weights."""
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        if torch.distributed.get_rank() == 0:
            save_weights(engine.module, model_dir)
    torch.distributed.barrier()


def segment_seed(seed: int, step: int) -> int:
    """The seed of the data/RNG segment that starts at ``step`` (distinct for every (seed, step))."""
    return int.from_bytes(hashlib.sha256(f"{seed}@{step}".encode()).digest()[:4], "big")


def rank_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of ``rank`` for the segment at ``step``: the segment's plus the rank, as open_clip's
    ``random_seed(seed, rank)``. Each rank draws its own dropout masks and crops; one seed on every rank
    would draw the same ones on each (same-shaped batches), correlating what should be independent."""
    return segment_seed(seed, step) + rank


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
    if not latest.is_file():
        return 0
    tag = latest.read_text().strip()
    if not (tag.startswith(_TAG) and tag[len(_TAG):].isdigit() and (checkpoint_dir / tag).is_dir()):
        print(f"pretrain: {latest} names no checkpoint in {checkpoint_dir} ({tag!r}): not resuming", flush=True)
        return 0
    return int(tag[len(_TAG):])


def save_checkpoint(engine: Any, checkpoint_dir: Path, step: int, client_state: dict[str, Any]) -> None:
    """DeepSpeed's checkpoint of ``step``, then ``latest`` pointed at it, then the older ones deleted.

    DeepSpeed's rank 0 rewrites ``latest`` in place once its own files are written, while other ranks may
    still be writing theirs: a kill then leaves it naming an incomplete checkpoint, or truncated, naming
    none, and every rerun fails. Here it moves, atomically, after every rank has saved (DeepSpeed's closing
    barrier), and only then do older checkpoints go: the paper profile writes ~109 of ~3 GB each, which
    kept would fill the disk long before the run ends (open_clip_train's ``--delete-previous-checkpoint``).
    """
    tag = f"{_TAG}{step}"
    engine.save_checkpoint(str(checkpoint_dir), tag=tag, client_state=client_state, save_latest=False)
    if torch.distributed.get_rank() == 0:
        write_bytes_atomic(checkpoint_dir / "latest", tag.encode())
        for old in checkpoint_dir.glob(f"{_TAG}*"):
            if old.is_dir() and old.name != tag:
                shutil.rmtree(old)


def _summed_over_ranks(count: int, device: torch.device) -> int:
    """``count`` summed over every rank (each reads its own shards), once, at the end of a run."""
    total = torch.tensor([count], dtype=torch.long, device=device)
    if torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(total)
    return int(total.item())


def say_if_threads_differ(written_on: int | None, step: int) -> None:
    """A CPU run's float sums follow torch's thread count: resumed on another count, training goes on validly
    but no longer as the uninterrupted run would have (exact resume needs the same count)."""
    now = torch.get_num_threads()
    if written_on is not None and written_on != now and not torch.cuda.is_available():
        print(f"pretrain: resuming from step {step} on {now} torch threads, the checkpoint was written on "
              f"{written_on}: the run goes on, but not bit-identical to an uninterrupted one "
              f"(OMP_NUM_THREADS={written_on} would make it so)", flush=True)


def pretrain(model: torch.nn.Module, model_dir: Path, shard_dir: Path, checkpoint_dir: Path, cfg: TrainConfig,
             log: LogFn | None = None) -> TrainSummary:
    """Train ``model`` (described by ``model_dir``: its configs and tokenizer) on the train shards, resuming
    from ``checkpoint_dir`` when it holds a checkpoint; its weights are written into ``model_dir`` at the end.

    With several ranks DeepSpeed starts every rank from rank 0's weights (the engine broadcasts them).
    """
    init_distributed()
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    torch.manual_seed(cfg.seed)
    engine, scheduler = build_engine(model, cfg, world)
    start, loss_value = 0, float("nan")
    if checkpoint_step(checkpoint_dir):
        _, client_state = engine.load_checkpoint(str(checkpoint_dir))
        start, loss_value = int(client_state["step"]), float(client_state.get("loss", "nan"))
        say_if_threads_differ(client_state.get("torch_threads"), start)

    image_size = model.visual.image_size[0]
    preprocess = train_image_transform(image_size)  # uint8 out; normalised on the device in train_step
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    collate = CaptionCollator(tokenizer, tokenizer.model_max_length,  # the context length
                              sort_by_length=cfg.text_buckets > 1)
    skipped = SkipTally()  # what every reader skipped: this process's, or each loader worker's, count
    loss_fn = contrastive_loss(world)

    samples = tokens = 0
    t0 = time.perf_counter()
    for begin, end in segments(start, cfg.steps, cfg.checkpoint_every):
        torch.manual_seed(rank_seed(cfg.seed, begin, rank))
        batches = train_batches(shard_dir, preprocess, collate, cfg.micro_batch_size, seed=segment_seed(cfg.seed, begin),
                                rank=rank, num_workers=cfg.num_workers, prefetch_factor=cfg.prefetch_factor,
                                skips=SkipCounter(), draft_size=image_size)
        micro_batches = skipped.read(batches)
        for done in range(begin + 1, end + 1):
            t_step, lr = time.perf_counter(), scheduler.get_last_lr()[0]  # the rate this step runs at
            result = train_step(engine, loss_fn, micro_batches, cfg.gradient_accumulation_steps,
                                tokenizer.pad_token_id, cfg.text_layout(tokenizer.model_max_length))
            samples, tokens = samples + result.samples, tokens + result.tokens
            if log and rank == 0 and (done % cfg.log_every == 0 or done == cfg.steps):
                elapsed = time.perf_counter() - t0
                log(done, {"loss": result.loss, "lr": lr, "logit_scale": result.logit_scale,
                           "step_time_s": time.perf_counter() - t_step, "samples_per_s": samples / elapsed,
                           "tokens_per_s": tokens / elapsed, "skipped_steps": engine.skipped_steps})
        loss_value = result.loss  # one wait for the GPU per segment, not per step
        if not math.isfinite(loss_value):  # without ZeRO the update took it into the weights: keep them out
            kept = f"the checkpoint of step {begin} is kept" if cfg.checkpoint_every and begin else "no checkpoint"
            raise DivergedError(f"pretrain: the loss is {loss_value} at step {end}; steps {begin + 1}-{end} are not "
                                f"checkpointed ({kept}). A rerun resumes from the last checkpoint and may diverge "
                                "again; a lower pretrain.lr, a longer warmup_steps or a grad_clip trains from the start")
        skipped.next_stream()
        if cfg.checkpoint_every:
            save_checkpoint(engine, checkpoint_dir, end,
                            {"step": end, "loss": loss_value, "torch_threads": torch.get_num_threads()})
    seconds = time.perf_counter() - t0
    save_consolidated(engine, model_dir)
    return TrainSummary(steps=cfg.steps, resumed_from=start, samples=samples, tokens=tokens, seconds=seconds,
                        final_loss=loss_value, skipped_samples=_summed_over_ranks(skipped.total, engine.device),
                        skipped_steps=engine.skipped_steps)
