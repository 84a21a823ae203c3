"""Training runs the tests launch in their own processes (one rank, or several under torchrun).

``zero``: a few steps of a tiny CLIP on fixed global batches, each rank taking its slice, for every
ZeRO variant asked for; rank 0 writes the losses and, per variant, probe embeddings and a
consolidated model dir — so world sizes and ZeRO stages can be compared exactly.
``pretrain``: the real pretraining loop on shards, logging every step's loss to a JSON-lines file
(the kill -9 / resume test reads it while the run is going).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from biomedclip_factory.model.build import create_model
from biomedclip_factory.train.ds_config import TrainConfig
from biomedclip_factory.train.loop import (build_engine, contrastive_loss, init_distributed, pretrain,
                                           save_consolidated, train_step)

GLOBAL_BATCH, STEPS, TEXT_LEN = 8, 3, 12


def config(**overrides) -> TrainConfig:
    base = dict(seed=0, steps=STEPS, micro_batch_size=4, gradient_accumulation_steps=1, lr=1e-3, warmup_steps=0,
                weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6, grad_clip=1.0, precision="fp32", zero_stage=0,
                log_every=1, checkpoint_every=0, num_workers=0)
    return TrainConfig(**{**base, **overrides})


def global_batches(vocab_size: int, image_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1234)
    batches = []
    for _ in range(STEPS):
        images = torch.randn(GLOBAL_BATCH, 3, image_size, image_size, generator=g)
        tokens = torch.randint(5, vocab_size, (GLOBAL_BATCH, TEXT_LEN), generator=g)
        lengths = torch.randint(3, TEXT_LEN + 1, (GLOBAL_BATCH, 1), generator=g)
        tokens[torch.arange(TEXT_LEN).expand(GLOBAL_BATCH, -1) >= lengths] = 0  # [PAD]
        tokens[:, 0] = 2  # [CLS]
        batches.append((images, tokens))
    return batches


def run_zero(model_dir: Path, variants: list[str], out: Path) -> None:
    init_distributed()
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
        mine = iter((i[rank * per_rank:(rank + 1) * per_rank], t[rank * per_rank:(rank + 1) * per_rank])
                    for i, t in batches)
        losses = [train_step(engine, contrastive_loss(world), mine, 1, pad_token_id=0).loss for _ in range(STEPS)]
        engine.eval()
        with torch.no_grad():
            probe_images, probe_texts = batches[0]
            dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
            image_emb = engine.module.encode_image(probe_images.to(engine.device, dtype)).float().tolist()
            text_emb = engine.module.encode_text(probe_texts.to(engine.device)).float().tolist()
        saved = out.parent / f"zero{variant}"
        if rank == 0:
            shutil.copytree(model_dir, saved, dirs_exist_ok=True)
        torch.distributed.barrier()
        save_consolidated(engine, saved)
        results[variant] = {"losses": losses, "image_emb": image_emb, "text_emb": text_emb, "model_dir": str(saved)}
    if rank == 0:
        out.write_text(json.dumps({"world_size": world, "results": results}))


def run_pretrain(model_dir: Path, shards: Path, checkpoints: Path, steps: int, every: int, log_file: Path) -> None:
    def log(step: int, values: dict[str, float]) -> None:
        with log_file.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")

    summary = pretrain(model_dir, shards, checkpoints, config(steps=steps, checkpoint_every=every, warmup_steps=2), log)
    with log_file.open("a") as f:
        f.write(json.dumps({"done": True, "resumed_from": summary.resumed_from, "tokens": summary.tokens}) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    z = sub.add_parser("zero")
    z.add_argument("model_dir", type=Path)
    z.add_argument("out", type=Path)
    z.add_argument("variants", nargs="+")
    p = sub.add_parser("pretrain")
    for name in ("model_dir", "shards", "checkpoints"):
        p.add_argument(name, type=Path)
    p.add_argument("steps", type=int)
    p.add_argument("every", type=int)
    p.add_argument("log_file", type=Path)
    args = parser.parse_args()
    if args.mode == "zero":
        run_zero(args.model_dir, args.variants, args.out)
    else:
        run_pretrain(args.model_dir, args.shards, args.checkpoints, args.steps, args.every, args.log_file)
