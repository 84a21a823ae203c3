"""Benchmark: our DeepSpeed training step vs a plain open_clip-style torch loop, same model and data.

Both loops train the same model (same seeded init) on the same in-memory batches, so only the
loop differs: ours is ``build_engine`` + ``train_step`` (DeepSpeed ZeRO from the params, gathered
contrastive loss, logit-scale clamp); the baseline is what open_clip's trainer does per step
(AdamW, ClipLoss, backward, clip_grad_norm_, step, clamp). They alternate in rounds and the
median ratio is printed (target ≥ 0.95). It also counts the step's FLOPs with torch's
FlopCounterMode, measures the matmul peak of the device in the same run (bf16 on a GPU, fp32 on
a CPU) and reports pairs/s and MFU; on an H200 with ``--profile params/biomedclip.yaml`` the goal
is ≥ 45% MFU, ≈ 1,500 pairs/s.

With ``--accumulation K`` a step is K micro-batches of ``--batch`` contrasted as one batch: the
baseline then runs open_clip's ``--accum-freq`` (cached features, one recompute per micro-batch),
and ours is also timed at accumulation 1 on the same micro-batches, to report what the recompute
costs per pair (``recompute_cost``: extra time per pair over not accumulating).

With ``--caption-lengths FILE`` the captions take real token counts instead of filling the context,
and ``--also-text-layouts 1,4,12,pack`` times other text layouts (length group counts, or packed rows)
on the same engine beside the profile's own (``pairs_per_s_by_text_layout``).

    .venv/bin/python benchmarks/train.py [--profile params.yaml] [--steps 10] [--rounds 3] [--batch 32]
                                         [--accumulation 1] [--caption-lengths FILE] [--also-text-layouts 1,pack]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from open_clip.loss import ClipLoss
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from biomedclip_factory.model.build import ModelSpec, init_model_dir  # noqa: E402
from biomedclip_factory.model.tokenizer import train_wordpiece  # noqa: E402
from biomedclip_factory.params import load_section  # noqa: E402
from biomedclip_factory.train.loop import (MAX_LOGIT_SCALE, _param_groups, _text_input,  # noqa: E402
                                           accept_text_layouts, build_engine, contrastive_loss, train_step)
from biomedclip_factory.train.ds_config import TextLayout, TrainConfig, effective_zero_stage  # noqa: E402
from biomedclip_factory.train.packing import check_packable  # noqa: E402
from biomedclip_factory.train.process_group import distributed  # noqa: E402

CAPTIONS = ["Axial CT of the chest shows a nodule in the right upper lobe.",
            "Histology of the liver, haematoxylin and eosin stain, scale bar 50 µm."]


def batches(n: int, batch: int, image_size: int, vocab: int, context: int, pin: bool,
            lengths: torch.Tensor | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """On the host, pinned where there is a GPU, as both trainers' loaders hand them over. Captions fill
    the context, or take token counts drawn from ``lengths`` (padded with 0 to the context, as open_clip's
    tokenizer pads), sorted within the batch as pretrain's length-grouping collator sorts them."""
    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(n):
        texts = torch.randint(5, vocab, (batch, context), generator=g)
        if lengths is not None:
            drawn = lengths[torch.randint(len(lengths), (batch,), generator=g)].clamp(1, context).sort().values
            texts[torch.arange(context)[None, :] >= drawn[:, None]] = 0
        data.append((torch.randn(batch, 3, image_size, image_size, generator=g), texts))
    return [(images.pin_memory(), texts.pin_memory()) for images, texts in data] if pin else data


def plain_loop(model: torch.nn.Module, cfg, data, device: torch.device, accumulation: int = 1) -> callable:
    """open_clip's train_one_epoch, reduced to one process (its ``--accum-freq`` too): the baseline."""
    if cfg.grad_checkpointing:  # open_clip's --grad-checkpointing, as the profile asks of ours
        model.set_grad_checkpointing(True)
    if cfg.compile:  # open_clip's --torchcompile, as the profile asks ours to compile its towers
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    loss_fn = ClipLoss()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    state = {"i": 0}

    def step() -> None:
        micro = [tuple(t.to(device, non_blocking=True) for t in data[(state["i"] + k) % len(data)]) for k in range(accumulation)]
        state["i"] += accumulation
        if accumulation == 1:
            with autocast:
                loss = loss_fn(*model(*micro[0]))
            loss.backward()
        else:
            with torch.no_grad(), autocast:
                cached = [model(images, texts)[:2] for images, texts in micro]
            for j, (images, texts) in enumerate(micro):
                with autocast:
                    image_f, text_f, scale = model(images, texts)
                    image_f = torch.cat([image_f if k == j else c[0] for k, c in enumerate(cached)])
                    text_f = torch.cat([text_f if k == j else c[1] for k, c in enumerate(cached)])
                    loss = loss_fn(image_f, text_f, scale)
                loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return step


def ours_loop(model: torch.nn.Module, cfg, data, accumulation: int = 1) -> callable:
    """Our step, given the text tower's layout: one engine (one compile) for every layout."""
    cfg = type(cfg)(**{**cfg.__dict__, "gradient_accumulation_steps": accumulation})
    engine, _ = build_engine(model, cfg, world_size=1)
    loss_fn = contrastive_loss(1)
    stream = iter(data[i % len(data)] for i in range(10**9))
    return lambda layout: lambda: train_step(engine, loss_fn, stream, accumulation, pad_token_id=0,
                                             text_layout=layout)


def _layout_names(value: str) -> list[str]:
    names = value.split(",")
    for name in names:
        if name != "pack" and not (name.isdigit() and int(name) > 0):
            raise argparse.ArgumentTypeError(f"{name!r} is neither a length group count nor 'pack'")
    return names


def _layout_words(name: str) -> str:
    return "packed end to end into rows of the context" if name == "pack" else f"in {name} length groups"


def steps_per_s(step, n: int, device: torch.device) -> float:
    step()  # warm-up: allocator, kernels, torch.compile's first graphs
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return n / (time.perf_counter() - t0)


def step_flops(model: torch.nn.Module, data, device: torch.device, bf16: bool, layout: TextLayout) -> int:
    """The FLOPs of our step on ``data[0]``, the text tower's input made as ``train_step`` makes it."""
    images, texts = data[0]
    accept_text_layouts(model)
    with FlopCounterMode(display=False) as counter, torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        ClipLoss()(*model(images.to(device), _text_input(texts, device, 0, layout))).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, reps: int) -> float:
    """The achievable dense matmul FLOP/s of this device in ``dtype``, measured now (MFU's denominator)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--zero-stage", type=int, default=None, help="override the profile's pretrain.zero_stage")
    ap.add_argument("--accumulation", type=int, default=1, help="micro-batches per step, contrasted as one batch")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="override the profile's pretrain.compile (both loops)")
    ap.add_argument("--also-text-layouts", type=_layout_names, default=[],
                    help="other text layouts to time on the same engine, comma-separated: a length group count, "
                         "or 'pack' (captions end to end in rows of the context); beside the profile's own")
    ap.add_argument("--caption-lengths", type=Path, default=None,
                    help="a JSON list of caption token counts (benchmarks/padding.py --lengths-out) to draw from, "
                         "rather than captions that fill the context")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = ModelSpec.from_params(load_section("model", args.profile))
    cfg = TrainConfig.from_params(load_section("pretrain", args.profile), train_samples=10**6)
    if device.type == "cpu":  # CPUs here have no fast bf16; the loop, not the precision, is under test
        cfg = type(cfg)(**{**cfg.__dict__, "precision": "fp32"})
    cfg = type(cfg)(**{**cfg.__dict__, "micro_batch_size": args.batch, "gradient_accumulation_steps": 1,
                       "steps": 10**6, "offload_optimizer": False,
                       "zero_stage": cfg.zero_stage if args.zero_stage is None else args.zero_stage,
                       "compile": cfg.compile if args.compile is None else args.compile})
    with distributed():  # the group is left cleanly: a rank exiting inside one can abort after its work
        run(args, spec, cfg, device)


def run(args: argparse.Namespace, spec: ModelSpec, cfg: TrainConfig, device: torch.device) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        train_wordpiece(CAPTIONS, Path(tmp) / "tok", 1000, 1, True, spec.context_length)
        torch.manual_seed(cfg.seed)
        template = init_model_dir(spec, Path(tmp) / "tok", Path(tmp) / "clip")
    image_size = template.visual.image_size[0] if isinstance(template.visual.image_size, tuple) \
        else template.visual.image_size
    lengths = torch.tensor(json.loads(args.caption_lengths.read_text())) if args.caption_lengths else None
    data = batches(4, args.batch, image_size, template.text.vocab_size, spec.context_length,
                   pin=device.type == "cuda", lengths=lengths)

    def fresh() -> torch.nn.Module:  # the same seeded init for both loops
        return copy.deepcopy(template).to(device)

    k = args.accumulation
    plain = plain_loop(fresh(), cfg, data, device, k)
    own = "pack" if cfg.text_packing else str(cfg.text_buckets)
    layouts = {name: TextLayout(pack_width=spec.context_length) if name == "pack" else TextLayout(buckets=int(name))
               for name in dict.fromkeys([own, *args.also_text_layouts])}
    if "pack" in layouts:  # build_engine checks only a profile that packs
        check_packable(template.text)
    ours_with = ours_loop(fresh(), cfg, data, k)
    ours, others = ours_with(layouts[own]), {name: ours_with(layout) for name, layout in layouts.items() if name != own}
    single = ours_loop(fresh(), cfg, data)(layouts[own]) if k > 1 else None
    ratios, ours_rates, plain_rates, single_rates = [], [], [], []
    other_rates: dict[str, list[float]] = {name: [] for name in others}

    def summary() -> dict:
        median = statistics.median
        result = {"benchmark": "train", "device": str(device), "profile": str(args.profile.name), "batch": args.batch,
                  "accumulation": k, "precision": cfg.precision, "compile": cfg.compile, "zero_stage": cfg.zero_stage,
                  "zero_stage_run": effective_zero_stage(cfg, 1),
                  "baseline": "plain torch loop (open_clip style" + (", --accum-freq)" if k > 1 else ")"),
                  "ours_steps_per_s": median(ours_rates), "baseline_steps_per_s": median(plain_rates),
                  "ratio": round(median(ratios), 3), "target": 0.95, "pairs_per_s": median(ours_rates) * args.batch * k,
                  "captions": "synthetic, every one fills the context (any length groups all at its width)" if lengths is None
                  else f"synthetic at the token counts of {args.caption_lengths.name} (median {int(lengths.median())});"
                       f" ours {_layout_words(own)}, the baseline padded to the context as open_clip's "
                       "tokenizer pads", "text_layout": own}
        if other_rates:  # the same engine in other layouts: per-group launch cost against padding saved
            result["pairs_per_s_by_text_layout"] = {name: round(median(r) * args.batch * k) for name, r in
                                                    {own: ours_rates, **other_rates}.items()}
        if single_rates:  # time per pair, accumulating vs one micro-batch per step: the recompute's price
            result["recompute_cost"] = round(median(single_rates) / (median(ours_rates) * k) - 1, 3)
        return result

    for done in range(1, args.rounds + 1):
        plain_rates.append(steps_per_s(plain, args.steps, device))
        ours_rates.append(steps_per_s(ours, args.steps, device))
        ratios.append(ours_rates[-1] / plain_rates[-1])
        if single:
            single_rates.append(steps_per_s(single, args.steps * k, device))
        for n, step in others.items():
            other_rates[n].append(steps_per_s(step, args.steps, device))
        # Every round's rates are printed: what a time limit cuts short keeps the rounds it finished.
        print(json.dumps({**summary(), "phase": "rates", "rounds": done}), flush=True)
    result = summary()
    # MFU against the matmul peak measured now: bf16 on a GPU (the paper's setting), fp32 on a CPU.
    bf16 = cfg.precision == "bf16"
    flops = step_flops(fresh(), data, device, bf16, layouts[own])
    peak = matmul_peak(device, torch.bfloat16 if bf16 else torch.float32, *((8192, 50) if device.type == "cuda"
                                                                              else (1024, 5)))
    result.update(step_tflop=round(flops / 1e12, 4), peak_tflops=round(peak / 1e12, 3),
                  peak_dtype="bf16" if bf16 else "fp32", mfu=round(flops * statistics.median(ours_rates) / peak, 3))
    if device.type == "cuda":  # the peak holds every model built here, not one loop's alone
        result.update(mfu_goal=0.45, pairs_per_s_goal=1500,
                      peak_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
