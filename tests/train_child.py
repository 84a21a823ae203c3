"""Training runs the tests launch in their own processes (one rank, or several under torchrun).

``zero``: a few steps of a tiny CLIP on fixed global batches, each rank taking its slice, for every
ZeRO variant asked for; rank 0 writes the losses and, per variant, probe embeddings and a
consolidated model dir — so world sizes and ZeRO stages can be compared exactly.
``accum``: the same steps as one micro-batch per rank and as 4 accumulated ones, same global batch.
``clamp``: bf16 steps from a logit scale past log(100); the fp32 masters against the saved weights.
``lock``: steps with the image tower locked and the text tower locked but for its last layer (the locked
layers' LayerNorms training, open_clip's default, or frozen).
``loss``: our contrastive loss (local × global logits) against the full matrix, gradients gathered.
``pretrain``: the real pretraining loop on shards, logging every step's loss to a JSON-lines file; ZeRO
stage, precision and accumulation as asked, and optionally a crash after a given step (a lost rank).
``seeds``: one step of the real loop per rank, recording the torch seed its first forward ran under.
``jobs``: several of the above, one after another in one launch (a launch costs ~5–8 s on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from typing import Iterator

import deepspeed
import torch
from deepspeed.utils import safe_get_full_fp32_param
from open_clip.loss import ClipLoss

from biomedclip_factory.model.build import WEIGHTS_NAME, create_model
from biomedclip_factory.train.ds_config import TrainConfig
from biomedclip_factory.train.loop import (MAX_LOGIT_SCALE, MicroBatch, build_engine, contrastive_loss, pretrain,
                                           save_consolidated, train_step)
from biomedclip_factory.train.process_group import distributed

GLOBAL_BATCH, STEPS, TEXT_LEN = 8, 3, 12
CHILD = Path(__file__)


def launch(args: list[str], ranks: int, crashes: bool = False) -> None:
    """Run this script as ``ranks`` processes (torch's elastic launcher for more than one) and check it ended
    well (or, where it ``crashes`` by design, that it failed)."""
    launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                    "--standalone", "--nproc_per_node", str(ranks)]
    proc = subprocess.run(launcher + [str(CHILD), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert (proc.returncode != 0) == crashes, proc.stdout[-3000:] + proc.stderr[-6000:]


def loss_and_grads(model: torch.nn.Module, images: torch.Tensor, texts) -> tuple[torch.Tensor, dict]:
    """One contrastive loss and its gradients, for comparing two ways of computing the same step."""
    loss = contrastive_loss(1)(*model(images, texts))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_step(results: list, atol: float) -> None:
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 20
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=atol,
                                   msg=lambda m, name=name: f"{name}: {m}")


def config(**overrides) -> TrainConfig:
    base = dict(seed=0, steps=STEPS, micro_batch_size=4, gradient_accumulation_steps=1, lr=1e-3, warmup_steps=0,
                weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6, grad_clip=1.0, precision="fp32", zero_stage=0,
                log_every=1, checkpoint_every=0, num_workers=0)
    return TrainConfig(**{**base, **overrides})


def global_batches(vocab_size: int, image_size: int, size: int = GLOBAL_BATCH) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1234)
    batches = []
    for _ in range(STEPS):
        images = torch.randn(size, 3, image_size, image_size, generator=g)
        tokens = torch.randint(5, vocab_size, (size, TEXT_LEN), generator=g)
        lengths = torch.randint(3, TEXT_LEN + 1, (size, 1), generator=g)
        tokens[torch.arange(TEXT_LEN).expand(size, -1) >= lengths] = 0  # [PAD]
        tokens[:, 0] = 2  # [CLS]
        batches.append((images, tokens))
    return batches


def run_zero(model_dir: Path, variants: list[str], out: Path) -> None:
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    per_rank = GLOBAL_BATCH // world
    results = {}
    for variant in variants:  # a ZeRO stage with options: "2", "2+offload", "3+bf16"
        stage, *extras = variant.split("+")
        torch.manual_seed(0)
        model = create_model(model_dir, load_weights=True)
        cfg = config(zero_stage=int(stage), micro_batch_size=per_rank, offload_optimizer="offload" in extras,
                     precision="bf16" if "bf16" in extras else "fp32")
        engine, _ = build_engine(model, cfg, world)
        batches = global_batches(model.text.vocab_size, model.visual.image_size[0])
        mine = _micro_batches(batches, rank, world, 1)
        losses = [train_step(engine, contrastive_loss(world), mine, 1, pad_token_id=0).loss for _ in range(STEPS)]
        engine.eval()
        with torch.no_grad():
            probe_images, probe_texts = batches[0]
            image_emb = engine.module.encode_image(probe_images.to(engine.device)).float().tolist()
            text_emb = engine.module.encode_text(probe_texts.to(engine.device)).float().tolist()
        saved = out.parent / f"zero{variant}"
        if rank == 0:
            shutil.copytree(model_dir, saved, dirs_exist_ok=True)
        torch.distributed.barrier()
        save_consolidated(engine, saved)
        results[variant] = {"losses": losses, "image_emb": image_emb, "text_emb": text_emb, "model_dir": str(saved)}
    if rank == 0:
        out.write_text(json.dumps({"world_size": world, "results": results}))


def _micro_batches(batches: list, rank: int, world: int, accumulation: int) -> Iterator[MicroBatch]:
    """This rank's slice of each global batch, cut into ``accumulation`` micro-batches."""
    for images, texts in batches:
        per_rank = images.shape[0] // world
        mine = images[rank * per_rank:(rank + 1) * per_rank], texts[rank * per_rank:(rank + 1) * per_rank]
        yield from zip(*(t.chunk(accumulation) for t in mine))


def run_accum(model_dir: Path, out: Path, variant: str) -> None:
    """Losses and consolidated weights after STEPS steps of a 16-pair global batch, at 1 and 4 micro-batches."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    stage, *extras = variant.split("+")
    results = {}
    for accumulation in (1, 4):
        torch.manual_seed(0)
        model = create_model(model_dir, load_weights=True)
        cfg = config(zero_stage=int(stage), micro_batch_size=16 // world // accumulation,
                     gradient_accumulation_steps=accumulation, offload_optimizer="offload" in extras,
                     grad_clip=1e9)  # unclipped: the norm shows
        engine, _ = build_engine(model, cfg, world)
        grad_norms: list[float] = []  # Adam would hide a gradient's scale; the norm the optimizer sees does not
        getattr(engine.optimizer, "optimizer", engine.optimizer).register_step_pre_hook(
            lambda opt, *_: grad_norms.append(float(sum(p.grad.double().pow(2).sum() for g in opt.param_groups
                                                        for p in g["params"] if p.grad is not None) ** 0.5)))
        batches = global_batches(model.text.vocab_size, model.visual.image_size[0], size=16)
        stream = _micro_batches(batches, rank, world, accumulation)
        losses = [train_step(engine, contrastive_loss(world), stream, accumulation, pad_token_id=0).loss
                  for _ in range(STEPS)]
        saved = out.parent / f"accum{accumulation}-world{world}"
        if rank == 0:
            shutil.copytree(model_dir, saved, dirs_exist_ok=True)
        torch.distributed.barrier()
        save_consolidated(engine, saved)
        results[accumulation] = {"losses": losses, "grad_norms": grad_norms, "model_dir": str(saved)}
    if rank == 0:
        out.write_text(json.dumps(results))


def run_clamp(model_dir: Path, out: Path, stage: str) -> None:
    """bf16 steps starting past the clamp: where the fp32 masters end, and what was saved."""
    stage = int(stage)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    torch.manual_seed(0)
    model = create_model(model_dir, load_weights=True)
    with torch.no_grad():
        model.logit_scale.fill_(MAX_LOGIT_SCALE + 0.5)
    cfg = config(zero_stage=stage, micro_batch_size=GLOBAL_BATCH // world, precision="bf16", lr=1e-2)
    engine, _ = build_engine(model, cfg, world)
    stream = _micro_batches(global_batches(model.text.vocab_size, model.visual.image_size[0]), rank, world, 1)
    for _ in range(STEPS):
        train_step(engine, contrastive_loss(world), stream, 1, pad_token_id=0)
    masters = {}
    for name, param in engine.module.named_parameters():  # collective under ZeRO: every rank asks
        master = safe_get_full_fp32_param(param)
        if master is None:  # no ZeRO: the module's parameter is what the optimizer steps
            with deepspeed.zero.GatheredParameters([param]):
                master = param.detach().clone()
        masters[name] = master.float().cpu().reshape(-1).tolist()
    saved = out.parent / f"clamp{stage}-world{world}"
    if rank == 0:
        shutil.copytree(model_dir, saved, dirs_exist_ok=True)
    torch.distributed.barrier()
    save_consolidated(engine, saved)
    if rank == 0:
        out.write_text(json.dumps({"masters": masters, "model_dir": str(saved)}))


def run_lock(model_dir: Path, out: Path, layer_norms: str) -> None:
    torch.manual_seed(0)
    model = create_model(model_dir, load_weights=True)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    cfg = config(lock_image=True, lock_text=True, lock_text_unlocked_layers=1,
                 lock_text_freeze_layer_norm=layer_norms == "frozen")
    engine, _ = build_engine(model, cfg, 1)
    stream = _micro_batches(global_batches(model.text.vocab_size, model.visual.image_size[0]), 0, 1, 1)
    for _ in range(STEPS):
        train_step(engine, contrastive_loss(1), stream, 1, pad_token_id=0)
    out.write_text(json.dumps({name: bool(torch.equal(before[name], p.detach()))
                               for name, p in engine.module.named_parameters()}))


def run_loss(out: Path) -> None:
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    g = torch.Generator().manual_seed(0)
    images, texts = (torch.nn.functional.normalize(torch.randn(4 * world, 16, generator=g), dim=1) for _ in range(2))
    ours = contrastive_loss(world)
    reference = ClipLoss(local_loss=False, gather_with_grad=True, rank=rank, world_size=world)
    results: dict = {"ours_is_local": ours.local_loss}
    for name, loss_fn in (("local", ours), ("full", reference)):
        image = images[rank * 4:(rank + 1) * 4].clone().requires_grad_()
        text = texts[rank * 4:(rank + 1) * 4].clone().requires_grad_()
        scale = torch.tensor(10.0, requires_grad=True)
        loss = loss_fn(image, text, scale)
        loss.backward()
        mean_loss, scale_grad = loss.detach().clone(), scale.grad.clone()
        for value in (mean_loss, scale_grad):  # what DDP / DeepSpeed average across ranks
            torch.distributed.all_reduce(value)
            value /= world
        image_grads, text_grads = [torch.empty_like(image) for _ in range(world)], [torch.empty_like(text) for _ in range(world)]
        torch.distributed.all_gather(image_grads, image.grad)
        torch.distributed.all_gather(text_grads, text.grad)
        results[name] = {"loss_mean": float(mean_loss), "scale": float(scale_grad),
                         "image": torch.cat(image_grads).tolist(), "text": torch.cat(text_grads).tolist()}
    if rank == 0:
        out.write_text(json.dumps(results))


def run_pretrain(args: argparse.Namespace) -> None:
    """The real loop; with ``crash_after``, rank 0 dies without a word after logging that step (a lost node:
    no final checkpoint, no save) and the launcher takes the other ranks down."""
    def log(step: int, values: dict[str, float]) -> None:
        with args.log_file.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if step == args.crash_after:
            os._exit(17)

    world = int(os.environ.get("WORLD_SIZE", 1))
    cfg = config(steps=args.steps, checkpoint_every=args.every, warmup_steps=2, zero_stage=args.zero,
                 precision=args.precision, gradient_accumulation_steps=args.accumulation,
                 micro_batch_size=args.batch // world // args.accumulation)
    torch.manual_seed(cfg.seed)  # a dir without weights starts from the seeded init, as the stage's does
    model = create_model(args.model_dir, load_weights=(args.model_dir / WEIGHTS_NAME).is_file())
    summary = pretrain(model, args.model_dir, args.shards, args.checkpoints, cfg, log)
    if torch.distributed.get_rank() == 0:
        with args.log_file.open("a") as f:
            f.write(json.dumps({"done": True, "resumed_from": summary.resumed_from, "tokens": summary.tokens}) + "\n")


def run_seeds(model_dir: Path, shards: Path, out: Path) -> None:
    """The torch seed each rank's first training forward runs under, in the real loop."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    work = out.parent / "clip"  # the loop writes the trained weights into its model dir
    if rank == 0:
        shutil.copytree(model_dir, work)
    torch.distributed.barrier()
    model = create_model(work, load_weights=True)
    seeds: list[int] = []
    model.register_forward_pre_hook(lambda *_: seeds.append(torch.initial_seed()))
    pretrain(model, work, shards, out.parent / "checkpoints", config(steps=1, micro_batch_size=2))
    every: list = [None] * world
    torch.distributed.all_gather_object(every, seeds[0])
    if rank == 0:
        out.write_text(json.dumps({"seeds": every}))


def run_start(tokenizer: Path, out: Path) -> None:
    """The pretrain stage's start on every rank: rank 0 builds the seeded model, the others an unseeded one;
    DeepSpeed's engine must leave every rank holding rank 0's weights."""
    from biomedclip_factory.model.build import ModelSpec
    from biomedclip_factory.train.resume import RunState
    from biomedclip_factory.train.run import PretrainRun

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    spec = ModelSpec(embed_dim=32, timm_model_name="test_vit", context_length=32, text_layers=2, text_width=64,
                     text_heads=2, text_mlp_ratio=2)
    run = PretrainRun(spec, config(seed=7), (None, None), tokenizer, out / "shards", out / "clip", "clip",
                      RunState(out / "ckpt"), train_samples=8)
    torch.manual_seed(100 + rank)  # whatever a rank's RNG holds: only rank 0's start may count
    model = run.start()

    def digests(module: torch.nn.Module) -> torch.Tensor:
        local = torch.stack([p.detach().double().sum() for p in module.parameters()])
        every = [torch.empty_like(local) for _ in range(world)]
        torch.distributed.all_gather(every, local)
        return torch.stack(every)

    before = digests(model)
    engine, _ = build_engine(model, config(seed=7), world)
    after = digests(engine.module)
    if rank == 0:
        out.joinpath("start.json").write_text(json.dumps({
            "differed_before": bool((before[1:] != before[0]).any()), "equal_after": bool((after == after[0]).all()),
            "staged": sorted(p.name for p in run.staging.iterdir())}))


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("jobs").add_argument("lines", nargs="+", help="commands of the modes below, run one after another")
    z = sub.add_parser("zero")
    z.add_argument("model_dir", type=Path)
    z.add_argument("out", type=Path)
    z.add_argument("variants", nargs="+")
    for mode in ("accum", "clamp"):
        a = sub.add_parser(mode)
        a.add_argument("model_dir", type=Path)
        a.add_argument("out", type=Path)
        a.add_argument("stage")  # a ZeRO stage, "+offload" for ZeRO-Offload
    sub.add_parser("loss").add_argument("out", type=Path)
    start = sub.add_parser("start")
    start.add_argument("tokenizer", type=Path)
    start.add_argument("out", type=Path)
    seeds = sub.add_parser("seeds")
    for name in ("model_dir", "shards", "out"):
        seeds.add_argument(name, type=Path)
    lock = sub.add_parser("lock")
    lock.add_argument("model_dir", type=Path)
    lock.add_argument("out", type=Path)
    lock.add_argument("layer_norms", choices=("train", "frozen"))  # a locked text layer's LayerNorms
    p = sub.add_parser("pretrain")
    for name in ("model_dir", "shards", "checkpoints"):
        p.add_argument(name, type=Path)
    p.add_argument("steps", type=int)
    p.add_argument("every", type=int)
    p.add_argument("log_file", type=Path)
    p.add_argument("--batch", type=int, default=4, help="global batch, over ranks and micro-batches")
    p.add_argument("--zero", type=int, default=0)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--accumulation", type=int, default=1)
    p.add_argument("--crash-after", type=int)
    return parser


def run(args: argparse.Namespace) -> None:
    if args.mode == "zero":
        run_zero(args.model_dir, args.variants, args.out)
    elif args.mode == "loss":
        run_loss(args.out)
    elif args.mode == "start":
        run_start(args.tokenizer, args.out)
    elif args.mode == "seeds":
        run_seeds(args.model_dir, args.shards, args.out)
    elif args.mode == "lock":
        run_lock(args.model_dir, args.out, args.layer_norms)
    elif args.mode in ("accum", "clamp"):
        (run_accum if args.mode == "accum" else run_clamp)(args.model_dir, args.out, args.stage)
    else:
        run_pretrain(args)


if __name__ == "__main__":
    cli = parser()
    given = cli.parse_args()
    with distributed():  # one process group, and DeepSpeed's import, for every job of a launch
        for line in given.lines if given.mode == "jobs" else [None]:
            if line is not None:
                print(f"job: {line}", flush=True)  # a failing job's traceback follows its line
            run(given if line is None else cli.parse_args(shlex.split(line)))
