"""Pretraining: ZeRO stages across ranks, exact resumption after a lost rank, init from pretrained dirs
(kill -9 of the real stage: tests/test_pipeline.py)."""
from __future__ import annotations

import dataclasses
import gc
import io
import itertools
import math
import json
import os
import shlex
import shutil
import subprocess
import sys
import weakref
from dataclasses import replace
from pathlib import Path

import open_clip
import pytest
import torch
import yaml
from PIL import Image
from deepspeed.runtime.zero import parameter_offload
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertConfig, BertModel

from biomedclip_factory.errors import DivergedError, ParamsError
from biomedclip_factory.io import read_jsonl
from biomedclip_factory.model.build import (WEIGHTS_NAME, ModelSpec, create_model, init_from_model_dir,
                                            init_model_dir, save_weights)
from biomedclip_factory.model.tokenizer import copy_tokenizer
from biomedclip_factory.shards.loader import length_buckets
from biomedclip_factory.shards.writer import write_split
from biomedclip_factory.train.ds_config import TextLayout, TrainConfig, deepspeed_config
from biomedclip_factory.params import load_section
from biomedclip_factory.train.loop import (MAX_LOGIT_SCALE, accept_text_layouts, build_engine, checkpoint_step,
                                           compile_towers, contrastive_loss, pretrain, rank_seed, segment_seed,
                                           segments, train_step)
from biomedclip_factory.train.packing import pack_captions
from biomedclip_factory.train.process_group import distributed
from biomedclip_factory.train.resume import RunState, run_fingerprint
from biomedclip_factory.train.schedule import cosine_schedule

from .pairs import make_pair
from .conftest import CAPTIONS, built_once, tiny_model_dir
from .train_child import assert_same_step, config, global_batches, launch, loss_and_grads

SPEC = ModelSpec(embed_dim=32, timm_model_name="test_vit", context_length=32, text_layers=2, text_width=64,
                 text_heads=2, text_mlp_ratio=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """Dropout off: ranks draw different masks than one process would, and the tests compare exactly."""
    return tiny_model_dir(tmp_path_factory.mktemp("train"), dropout=0.0)


def test_segments_cut_at_checkpoint_boundaries():
    assert list(segments(0, 10, 4)) == [(0, 4), (4, 8), (8, 10)]
    assert list(segments(4, 10, 4)) == [(4, 8), (8, 10)]
    assert list(segments(0, 10, 0)) == [(0, 10)]
    assert list(segments(10, 10, 4)) == []


def test_fp16_is_refused_where_deepspeed_zero_would_misscale_it():
    deepspeed_config(config(precision="fp16", zero_stage=2), world_size=1)  # runs as stage 0: correct
    for stage, world, offload in ((2, 2, False), (1, 1, True), (3, 1, False)):
        with pytest.raises(ParamsError, match="fp16.*bf16"):
            deepspeed_config(config(precision="fp16", zero_stage=stage, offload_optimizer=offload), world)
    assert deepspeed_config(config(precision="bf16", zero_stage=3), 2)["torch_autocast"] == {
        "enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}


def test_compile_is_a_param_and_refused_with_zero_3():
    from biomedclip_factory.params import Section

    from .conftest import REPO

    raw = {**yaml.safe_load((REPO / "params.yaml").read_text())["pretrain"], "compile": True, "zero_stage": 3}
    with pytest.raises(ParamsError, match="'pretrain.compile'.*zero_stage"):
        TrainConfig.from_params(Section(raw, "pretrain"), train_samples=8)
    assert TrainConfig.from_params(Section({**raw, "zero_stage": 2}, "pretrain"), train_samples=8).compile
    assert not TrainConfig.from_params(load_section("pretrain", REPO / "params.yaml"), train_samples=8).compile


def test_deepspeeds_throughput_timer_is_off():
    """On by default, it synchronises the device at every forward and step: the host could never run ahead."""
    assert deepspeed_config(config(), 1)["timers"] == {"throughput": {"enabled": False}}


def test_one_rank_steps_without_reducing_gradients(model_dir, monkeypatch):
    """On one rank the mean over ranks is the gradient itself; DeepSpeed would still flatten every gradient,
    all-reduce it and copy it back at every step (~6% of a tiny CPU step), where open_clip on one GPU does not."""
    with distributed():
        engine, _ = build_engine(create_model(model_dir, load_weights=True), config(micro_batch_size=8), 1)
        batches = global_batches(engine.module.text.vocab_size, engine.module.visual.image_size[0])

        def refuse(*_, **__) -> None:
            raise AssertionError("a one-rank step all-reduced")

        monkeypatch.setattr(torch.distributed, "all_reduce", refuse)
        losses = [train_step(engine, contrastive_loss(1), iter(batches), 1, 0).loss for _ in range(2)]
    assert losses[0] != losses[1]  # it trained


def test_bf16_runs_the_towers_under_autocast_over_fp32_weights(model_dir):
    """The paper's bf16 AMP: the towers compute in bf16 while every weight the optimizer steps stays fp32."""
    with distributed():
        engine, _ = build_engine(create_model(model_dir, load_weights=True), config(precision="bf16"), 1)
        images, texts = global_batches(engine.module.text.vocab_size, engine.module.visual.image_size[0])[0]
        image_f, text_f, _ = engine(images, texts)
    assert image_f.dtype == text_f.dtype == torch.bfloat16
    assert {p.dtype for p in engine.module.parameters()} == {torch.float32}


def test_an_engine_sets_the_cuda_math_open_clip_trainers_main_sets(model_dir):
    """open_clip_train's main turns on TF32 matmuls and cuDNN autotuning whenever CUDA is there; the paper's
    runs had them. Read from its source, so a change there shows here."""
    import re

    import open_clip_train.main

    source = Path(open_clip_train.main.__file__).read_text()
    settings = {(eval(flag.rsplit(".", 1)[0]), flag.rsplit(".", 1)[1]): value == "True" for flag, value in
                re.findall(r"^\s+(torch\.backends\.[\w.]+) = (True|False)$", source, re.MULTILINE)}
    assert {attr for _, attr in settings} >= {"allow_tf32", "benchmark", "deterministic"}
    before = {key: getattr(*key) for key in settings}
    try:
        for (module, attr), value in settings.items():
            setattr(module, attr, not value)
        with distributed():
            build_engine(create_model(model_dir, load_weights=True), config(), 1)
        assert {key: getattr(*key) for key in settings} == settings
    finally:
        for (module, attr), value in before.items():
            setattr(module, attr, value)


def test_offload_is_in_the_deepspeed_config_and_needs_a_zero_stage():
    ds = deepspeed_config(config(zero_stage=2, offload_optimizer=True), world_size=2)
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["train_batch_size"] == 4 * 1 * 2
    assert "offload_optimizer" not in deepspeed_config(config(zero_stage=2), 1)["zero_optimization"]
    with pytest.raises(ParamsError, match="zero_stage"):
        deepspeed_config(config(zero_stage=0, offload_optimizer=True), 1)


def test_zero_1_and_2_on_one_rank_run_as_stage_0_unless_offloading():
    stages = {(stage, world, offload): deepspeed_config(config(zero_stage=stage, offload_optimizer=offload), world)
              ["zero_optimization"]["stage"] for stage in (1, 2, 3) for world in (1, 2) for offload in (False, True)}
    assert stages == {(1, 1, False): 0, (2, 1, False): 0, (3, 1, False): 3, (1, 1, True): 1, (2, 1, True): 2,
                      (3, 1, True): 3, **{(s, 2, o): s for s in (1, 2, 3) for o in (False, True)}}


def test_activation_checkpointing_gives_the_same_loss_and_gradients(model_dir):
    images, texts = torch.randn(4, 3, 160, 160), torch.randint(5, 100, (4, 10))
    results = []
    for checkpointing in (False, True):
        model = create_model(model_dir, load_weights=True).train()
        if checkpointing:  # open_clip's HF tower *enables* checkpointing on set_grad_checkpointing(False)
            model.set_grad_checkpointing()
        assert model.visual.trunk.grad_checkpointing == model.text.transformer.is_gradient_checkpointing == checkpointing
        results.append(loss_and_grads(model, images, texts))
    assert_same_step(results, atol=1e-6)


@pytest.mark.slow  # inductor compiles both towers, forward and backward: ~90 s on 2 cores
def test_compiled_towers_give_the_same_loss_and_gradients_and_parameter_names(model_dir):
    """``pretrain.compile``: inductor's fused kernels round differently, nothing else; the state dict (so the
    checkpoints and the saved model) keeps its names, and length groups of new sizes and packed rows run too."""
    torch.manual_seed(0)
    images, texts = torch.randn(4, 3, 160, 160), torch.randint(5, 100, (4, 10))
    eager, compiled = (create_model(model_dir, load_weights=True).train() for _ in range(2))
    for model in (eager, compiled):
        accept_text_layouts(model)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0  # the two would draw different masks
    compile_towers(compiled)
    assert compiled.visual._compiled_call_impl is not None and compiled.text.transformer._compiled_call_impl is not None
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    assert_same_step([loss_and_grads(m, images, texts) for m in (eager, compiled)], atol=1e-5)
    for text_input in ([texts[:2, :6], texts[2:, :8]], pack_captions(texts, 0, 32, torch.device("cpu"))):
        for model in (eager, compiled):
            model.zero_grad()
        assert_same_step([loss_and_grads(m, images, text_input) for m in (eager, compiled)], atol=1e-5)


def test_length_buckets_change_the_work_not_the_loss_or_gradients(model_dir):
    """A length-sorted batch whose captions run through the text tower in groups, each padded only to
    its own longest, gives the loss and gradients of the batch padded whole (dropout off: its masks
    are drawn per group)."""
    torch.manual_seed(3)
    lengths = torch.tensor([3, 4, 4, 6, 9, 12, 20, 31])  # sorted, as CaptionCollator(sort_by_length=True) gives
    texts = torch.zeros(8, 32, dtype=torch.long)
    for row, n in enumerate(lengths):
        texts[row, :n] = torch.randint(5, 100, (int(n),))
    images = torch.randn(8, 3, 160, 160)
    groups = length_buckets(texts, 0, 4)
    assert [tuple(g.shape) for g in groups] == [(4, 8), (2, 16), (1, 24), (1, 32)]  # the least padding in 4 cuts
    real = int(lengths.sum())
    assert (sum(g.numel() for g in groups) / real, 8 * 31 / real) == pytest.approx((1.35, 2.79), abs=0.01)
    results = []
    for text_input in (texts, groups):
        model = create_model(model_dir, load_weights=True).eval()
        accept_text_layouts(model)
        results.append(loss_and_grads(model, images, text_input))
    assert_same_step(results, atol=1e-5)  # other GEMM widths, other rounding


@pytest.mark.slow  # three DeepSpeed engines in this process (~35 s)
def test_training_steps_on_length_buckets_or_packed_captions_follow_the_padded_batch(model_dir):
    """The DeepSpeed engine path: the same length-sorted micro-batches, text tower on the batch padded whole,
    on 3 length groups or on packed rows, give the same losses step after step."""
    losses = []
    with distributed():
        for layout in (TextLayout(), TextLayout(buckets=3), TextLayout(pack_width=32)):
            model = create_model(model_dir, load_weights=True)
            engine, _ = build_engine(model, config(micro_batch_size=8, text_buckets=layout.buckets,
                                                   text_packing=bool(layout.pack_width)), 1)
            batches = [(images[order], texts[order]) for images, texts in
                       global_batches(model.text.vocab_size, model.visual.image_size[0])
                       for order in [torch.argsort((texts != 0).sum(1), stable=True)]]
            stream = iter(batches)
            losses.append([train_step(engine, contrastive_loss(1), stream, 1, 0, layout).loss for _ in batches])
    assert losses[1] == pytest.approx(losses[0], rel=1e-5) and losses[2] == pytest.approx(losses[0], rel=1e-5)
    assert losses[0][0] != losses[0][-1]


@pytest.mark.slow  # two DeepSpeed engines in this process
@pytest.mark.parametrize("grad_clip", [1e-3, None], ids=["clipped", "unclipped"])
def test_a_step_is_open_clip_trainers_step(model_dir, grad_clip):
    """Stage 0 against open_clip_train's train_one_epoch, written out from its source: cosine_lr set
    before each step, ClipLoss, backward, clip_grad_norm_ over every gradient (only when a norm is set,
    as --grad-clip-norm), AdamW over its weight-decay groups, then the logit-scale clamp. Clipping, when
    set, is engaged at every step; with 2 micro-batches it applies once, to the whole batch's gradient."""
    import math

    from open_clip.loss import ClipLoss
    from open_clip_train.scheduler import cosine_lr

    cfg = config(micro_batch_size=8, lr=1e-3, warmup_steps=1, grad_clip=grad_clip)
    reference = _decay_shows(create_model(model_dir, load_weights=True))
    batches = global_batches(reference.text.vocab_size, reference.visual.image_size[0])
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = list(reference.named_parameters())
    optimizer = torch.optim.AdamW([{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
                                   {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": cfg.weight_decay}],
                                  lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    scheduler, norms = cosine_lr(optimizer, cfg.lr, cfg.warmup_steps, cfg.steps), []
    for step, (images, texts) in enumerate(batches):
        scheduler(step)
        optimizer.zero_grad()
        ClipLoss()(*reference(images, texts)).backward()
        if cfg.grad_clip is not None:
            norms.append(float(torch.nn.utils.clip_grad_norm_(reference.parameters(), cfg.grad_clip, norm_type=2.0)))
        optimizer.step()
        with torch.no_grad():
            reference.logit_scale.clamp_(0, math.log(100))
    assert cfg.grad_clip is None or min(norms) > cfg.grad_clip, norms  # every step clipped

    with distributed():
        for k in (1, 2):
            engine, _ = build_engine(_decay_shows(create_model(model_dir, load_weights=True)),
                                     replace(cfg, micro_batch_size=8 // k, gradient_accumulation_steps=k), 1)
            stream = (micro for images, texts in batches for micro in zip(images.chunk(k), texts.chunk(k)))
            for _ in batches:
                train_step(engine, contrastive_loss(1), stream, k, pad_token_id=0)
            assert not engine.tput_timer.config.enabled  # on, DeepSpeed's timer syncs the device every step
            ours = dict(engine.module.named_parameters())
            # Two micro-batches sum the gradient in another order; unclipped, Adam's normalisation turns that
            # noise on a near-zero gradient into up to ~1% of a step (clipped, eps damps such entries).
            atol = 5e-6 if k == 1 or cfg.grad_clip is not None else 0.02 * cfg.lr
            for name, p in reference.named_parameters():
                torch.testing.assert_close(ours[name].detach().reshape(p.shape), p.detach(), rtol=1e-5, atol=atol,
                                           msg=lambda m: f"{name}, {k} micro-batches: {m}")


@pytest.mark.slow  # a DeepSpeed engine in this process
def test_accumulated_micro_batches_reuse_their_dropout_masks(tmp_path):
    """With dropout on, each micro-batch's gradient pass must draw the masks its cached no-grad pass drew, so
    the summed gradients are those of one full-batch loss over exactly those features (else the fresh
    features contrast with cached ones of another mask, and the step follows no loss at all)."""
    dropout_dir = tiny_model_dir(tmp_path, dropout=0.3)
    reference = create_model(dropout_dir, load_weights=True).train()
    k, (images, texts) = 2, global_batches(reference.text.vocab_size, reference.visual.image_size[0])[0]
    micro = list(zip(images.chunk(k), texts.chunk(k)))
    torch.manual_seed(5)
    states = []
    with torch.no_grad():
        for batch in micro:  # the draws train_step's cached passes make
            states.append(torch.get_rng_state())
            reference(*batch)
    features = []
    for state, batch in zip(states, micro):
        torch.set_rng_state(state)
        features.append(reference(*batch))
    image_f, text_f = (torch.cat([f[i] for f in features]) for i in (0, 1))
    contrastive_loss(1)(image_f, text_f, features[0][2]).backward()
    expected = {n: p.grad for n, p in reference.named_parameters()}

    with distributed():
        engine, _ = build_engine(create_model(dropout_dir, load_weights=True),
                                 config(micro_batch_size=4, gradient_accumulation_steps=k, grad_clip=1e9), 1)
        grads: dict[str, torch.Tensor] = {}
        getattr(engine.optimizer, "optimizer", engine.optimizer).register_step_pre_hook(lambda *_: grads.update(
            {n: p.grad.clone() for n, p in engine.module.named_parameters()}))
        torch.manual_seed(5)
        train_step(engine, contrastive_loss(1), iter(micro), k, pad_token_id=0)
    assert expected.keys() == grads.keys() and len(grads) > 20
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name].reshape(grad.shape), grad, rtol=1e-4, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")


def _gloo_threads() -> int:
    """The process group threads gloo runs in this process (their names, as the kernel lists them)."""
    tasks = Path("/proc/self/task")
    return sum((task / "comm").read_text().startswith(("pt_gloo", "gloo")) for task in tasks.iterdir())


def _train_in_a_group(model_dir: Path, variant: dict, fail: bool) -> weakref.ref:
    """Three steps of an engine in its own process group (the third failing mid-forward if ``fail``); the
    model, weakly: the caller sees whether leaving the group freed it."""
    with distributed():
        model = create_model(model_dir, load_weights=True)
        freed = weakref.ref(model)
        engine, scheduler = build_engine(model, config(**variant), 1)
        batches = iter(global_batches(model.text.vocab_size, 160))
        for step in range(3):  # ZeRO-3 memoises from its second step, once it has traced the first
            if fail and step == 2:
                model.visual.trunk.blocks[0].register_forward_hook(lambda *_: 1 / 0)
            train_step(engine, contrastive_loss(1), batches, 1, 0)
        del engine, scheduler, model
    return freed


@pytest.mark.parametrize("variant, fail", [(dict(zero_stage=3), False), (dict(zero_stage=3), True),
                                           (dict(zero_stage=2, offload_optimizer=True), False)],
                         ids=["zero3", "zero3-failing-mid-forward", "zero2-offload"])
def test_a_run_leaves_no_model_or_process_group_behind(model_dir, variant, fail):
    """DeepSpeed keeps every engine's model, and through it the process group, alive for good (gradient
    hooks in a cycle, ZeRO-3's module stack and memo): leaving the group must free them, or a long-lived
    process leaks a model a run and its gloo threads die in interpreter teardown (an abort under load).
    A run that fails mid-forward leaves its submodules on ZeRO-3's stack: freed as well."""
    gc.collect()  # what earlier tests left to the collector is not this run's
    before = _gloo_threads()
    if fail:
        with pytest.raises(ZeroDivisionError):
            _train_in_a_group(model_dir, variant, fail)
        gc.collect()  # the traceback held the failed step's frames until now
        assert not parameter_offload.FWD_MODULE_STACK
    else:
        assert _train_in_a_group(model_dir, variant, fail)() is None
    assert _gloo_threads() == before


@pytest.mark.parametrize("run_fails", [False, True], ids=["run-succeeded", "run-failed"])
def test_a_failing_engine_teardown_still_leaves_the_group_and_never_hides_the_runs_error(
        model_dir, monkeypatch, capsys, run_fails):
    """A teardown that raises (a CUDA error in DeepSpeed's destroy) must not keep the group alive, nor replace
    the error a failed run raised: that one reaches the caller and the teardown's is printed."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    def broken(self) -> None:
        raise RuntimeError("device lost")

    monkeypatch.setattr(DeepSpeedEngine, "destroy", broken)
    expected = (KeyError, "the run's own") if run_fails else (RuntimeError, "releasing a DeepSpeed engine failed: "
                                                                             "RuntimeError: device lost")
    with pytest.raises(expected[0], match=expected[1]):
        with distributed():
            build_engine(create_model(model_dir, load_weights=True), config(), 1)
            if run_fails:
                raise KeyError("the run's own")
    assert not torch.distributed.is_initialized() and "MASTER_PORT" not in os.environ
    assert ("releasing a DeepSpeed engine failed too: RuntimeError: device lost" in capsys.readouterr().err) == run_fails


@pytest.mark.slow  # two DeepSpeed engines in this process
def test_runs_one_after_another_in_one_process(model_dir):
    """A long-lived process (a Prefect worker, a notebook) can train twice: the first run's process group
    goes with everything DeepSpeed cached of it, and the second builds its engine on a fresh one."""
    for _ in range(2):
        with distributed():
            engine, _ = build_engine(create_model(model_dir, load_weights=True), config(micro_batch_size=8), 1)
            batches = iter(global_batches(engine.module.text.vocab_size, 160))
            assert torch.isfinite(torch.tensor(train_step(engine, contrastive_loss(1), batches, 1, 0).loss))


def _decay_shows(model: torch.nn.Module) -> torch.nn.Module:
    """Gains and biases moved off their 1s and 0s (seeded), so that decaying them would show."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim < 2:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def _local_bert(dest: Path, tokenizer_dir: Path, vocab_size: int | None = None) -> BertModel:
    """A pretrained-style HF BERT dir saved here (config, weights, tokenizer), like MiniLM's."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(7)
    bert = BertModel(BertConfig(vocab_size=vocab_size or len(tokenizer), hidden_size=48, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=96))
    bert.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return bert


def test_text_tower_starts_from_a_local_bert_dir_and_trains_in_training_mode(model_dir, tmp_path):
    """The weights come from the BERT dir. transformers' from_pretrained hands the tower back in eval mode; the
    rank that loads it (rank 0 in the pretrain stage) must still train with dropout, as the ranks that build it
    from its config do and as open_clip's trainer does (it sets train mode every epoch)."""
    bert = _local_bert(tmp_path / "bert", model_dir)
    copy_tokenizer(tmp_path / "bert", tmp_path / "tok", model_max_length=32)
    model = init_model_dir(SPEC, tmp_path / "tok", tmp_path / "clip", text_init=tmp_path / "bert")
    text = model.text.transformer
    assert text.config.hidden_size == 48 and text.config.num_hidden_layers == 1  # sizes come from the BERT
    for name, value in bert.state_dict().items():
        if not name.startswith("pooler."):  # open_clip pools the [CLS] state itself
            torch.testing.assert_close(text.state_dict()[name], value, msg=name)
    with distributed():
        engine, _ = build_engine(model, config(), 1)
    assert [name for name, module in engine.module.named_modules() if not module.training] == []
    _local_bert(tmp_path / "other", model_dir, vocab_size=999)
    with pytest.raises(ParamsError, match="999-token vocabulary.*tokenizer.source"):
        init_model_dir(SPEC, tmp_path / "tok", tmp_path / "bad", text_init=tmp_path / "other")


def test_a_text_tower_saved_in_bf16_trains_and_loads_in_fp32(model_dir, tmp_path):
    """transformers builds a tower in its config's dtype: a BERT dir saved in bf16 gave a bf16 text tower under
    AdamW (the rounding fp32 masters avoid), and its config, copied into the model dir, made every later load
    bf16 too, plain open_clip's included."""
    bert = _local_bert(tmp_path / "bert", model_dir)
    bert.to(torch.bfloat16).save_pretrained(tmp_path / "bert")
    copy_tokenizer(tmp_path / "bert", tmp_path / "tok", model_max_length=32)
    model = init_model_dir(SPEC, tmp_path / "tok", tmp_path / "clip", text_init=tmp_path / "bert")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    torch.testing.assert_close(model.text.transformer.embeddings.word_embeddings.weight,
                               bert.embeddings.word_embeddings.weight.float())  # the BERT's weights, cast up
    save_weights(model, tmp_path / "clip")
    for loaded in (create_model(tmp_path / "clip", load_weights=True),
                   open_clip.create_model(f"local-dir:{tmp_path / 'clip'}", pretrained_text=False)):
        assert {p.dtype for p in loaded.parameters()} == {torch.float32}


def test_continued_pretraining_starts_from_a_saved_model_dir(model_dir, tmp_path):
    before = (model_dir / WEIGHTS_NAME).read_bytes()
    b = init_from_model_dir(model_dir, model_dir, tmp_path / "continued").eval()
    a = create_model(model_dir, load_weights=True).eval()
    image, text = torch.rand(2, 3, 160, 160), torch.tensor([[2, 10, 11, 3], [2, 12, 3, 0]])
    with torch.no_grad():
        torch.testing.assert_close(a.encode_image(image), b.encode_image(image))
        torch.testing.assert_close(a.encode_text(text), b.encode_text(text))
    assert (model_dir / WEIGHTS_NAME).read_bytes() == before
    with pytest.raises(ParamsError, match="has no open_clip_model.safetensors"):
        init_from_model_dir(tmp_path / "continued" / "nowhere", model_dir, tmp_path / "x")


def _jobs_in_one_launch(root: Path, ranks: int, jobs: dict[str, list[str]]) -> Path:
    """Run train_child's ``jobs`` (each a command whose ``{out}`` is its own dir under ``root``) one after another
    in one launch of ``ranks`` processes: DeepSpeed's import and the process group's start, ~5–8 s a launch on
    2 cores, are paid once for every test below that compares runs."""
    lines = []
    for name, command in jobs.items():
        (root / name).mkdir(parents=True)
        lines.append(shlex.join(arg.format(out=root / name) for arg in command))
    launch(["jobs", *lines], ranks=ranks)
    return root


# Each launch below runs once per test run, whichever pytest-xdist worker needs it first (``built_once``): the
# seeded model_dir and shards it starts from are the same files on every worker.
@pytest.fixture(scope="module")
def one_rank(model_dir: Path, tmp_path_factory) -> Path:
    m, out = str(model_dir), "{out}/out.json"
    return built_once(tmp_path_factory, "one_rank", lambda root: _jobs_in_one_launch(root, 1, {
        "zero": ["zero", m, out, "0"], "accum-0": ["accum", m, out, "0"], "clamp-0": ["clamp", m, out, "0"],
        "lock": ["lock", m, out, "train"], "lock-frozen-ln": ["lock", m, out, "frozen"]}))


@pytest.fixture(scope="module")
def two_ranks(model_dir: Path, shards: Path, tmp_path_factory) -> Path:
    m, out = str(model_dir), "{out}/out.json"
    return built_once(tmp_path_factory, "two_ranks", lambda root: _jobs_in_one_launch(root, 2, {
        "zero": ["zero", m, out, "1", "2", "3", "2+offload"], "start": ["start", m, "{out}"],
        "seeds": ["seeds", m, str(shards), out],
        **{f"accum-{stage}": ["accum", m, out, stage] for stage in ("2", "3", "2+offload")},
        **{f"clamp-{stage}": ["clamp", m, out, stage] for stage in ("2", "3")}, "loss": ["loss", out]}))


def _result(request: pytest.FixtureRequest, ranks: int, job: str) -> dict:
    """``job``'s output from the launch of ``ranks`` processes (only that launch is run for it)."""
    root = request.getfixturevalue("one_rank" if ranks == 1 else "two_ranks")
    return json.loads((root / job / "out.json").read_text())


@pytest.mark.slow
def test_zero_stages_on_two_ranks_match_one_process(one_rank: Path, two_ranks: Path):
    one = json.loads((one_rank / "zero/out.json").read_text())["results"]["0"]
    two = json.loads((two_ranks / "zero/out.json").read_text())
    assert two["world_size"] == 2
    assert one["losses"][0] != one["losses"][-1]  # the optimizer steps change the model
    for variant, run in two["results"].items():
        torch.testing.assert_close(torch.tensor(run["losses"]), torch.tensor(one["losses"]), rtol=1e-4, atol=1e-5,
                                   msg=f"ZeRO {variant} on 2 ranks vs 1 process")
    # The ZeRO-3 consolidated dir loads in plain open_clip and embeds like the engine that trained it.
    zero3 = two["results"]["3"]
    model = open_clip.create_model(f"local-dir:{zero3['model_dir']}", pretrained_text=False).eval()
    images, texts = global_batches(model.text.vocab_size, 160)[0]  # the probe batch the engine embedded
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), torch.tensor(zero3["image_emb"]), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.encode_text(texts), torch.tensor(zero3["text_emb"]), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_every_rank_starts_from_rank_0s_model(two_ranks: Path):
    """The pretrain stage builds the starting model on rank 0 only (in memory; its dir holds no weights yet) and
    the other ranks an unseeded one of the same shape: the engine must give them rank 0's weights."""
    start = json.loads((two_ranks / "start/start.json").read_text())
    assert start["differed_before"] and start["equal_after"]
    assert WEIGHTS_NAME not in start["staged"] and "open_clip_config.json" in start["staged"]


def _weights(model_dir: str) -> dict[str, torch.Tensor]:
    return load_file(Path(model_dir) / WEIGHTS_NAME)


@pytest.mark.parametrize("ranks,stage", [pytest.param(1, "0", marks=pytest.mark.slow),
                                         pytest.param(2, "2", marks=pytest.mark.slow),
                                         pytest.param(2, "3", marks=pytest.mark.slow),
                                         pytest.param(2, "2+offload", marks=pytest.mark.slow)])
def test_accumulated_micro_batches_train_like_one_batch(request, ranks, stage):
    """4 micro-batches of 4 (or 2 per rank) take the same steps as one batch of 16: every pair is
    contrasted with the whole global batch, not with its micro-batch."""
    runs = _result(request, ranks, f"accum-{stage}")
    one, four = runs["1"], runs["4"]
    assert one["losses"][0] != one["losses"][-1]
    torch.testing.assert_close(torch.tensor(four["losses"]), torch.tensor(one["losses"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(four["grad_norms"]), torch.tensor(one["grad_norms"]), rtol=1e-4, atol=0)
    a, b = _weights(one["model_dir"]), _weights(four["model_dir"])
    for name in a:  # fp32 summation order across ranks; Adam's normalisation turns that noise on near-zero
        # gradients into up to ~4% of one 1e-3 step (per-micro-batch losses miss the losses above by ~1e-2)
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("ranks,stage", [pytest.param(1, 0, marks=pytest.mark.slow),
                                         pytest.param(2, 2, marks=pytest.mark.slow),
                                         pytest.param(2, 3, marks=pytest.mark.slow)])
def test_bf16_clamps_and_saves_the_fp32_masters(request, ranks, stage):
    """From a logit scale past log(100), bf16 steps leave the fp32 master clamped, and the saved model is
    the masters bit for bit, not a bf16 copy cast back."""
    result = _result(request, ranks, f"clamp-{stage}")
    masters, saved = result["masters"], _weights(result["model_dir"])
    assert masters["logit_scale"][0] <= MAX_LOGIT_SCALE + 1e-6
    assert masters.keys() == saved.keys()
    for name, values in masters.items():
        assert saved[name].reshape(-1).tolist() == values, name


@pytest.mark.slow  # runs stages or DeepSpeed in subprocesses: out of the edit-test loop
def test_local_loss_gives_the_full_matrix_gradient_on_two_ranks(two_ranks: Path):
    """open_clip's local × global logits (the paper's --local-loss) against the global × global matrix."""
    grads = json.loads((two_ranks / "loss/out.json").read_text())
    assert grads["ours_is_local"]
    assert grads["local"]["loss_mean"] == pytest.approx(grads["full"]["loss_mean"], rel=1e-6)
    for key in ("image", "text", "scale"):
        torch.testing.assert_close(torch.tensor(grads["local"][key]), torch.tensor(grads["full"][key]),
                                   rtol=1e-5, atol=1e-7, msg=key)


@pytest.mark.slow  # runs stages or DeepSpeed in subprocesses: out of the edit-test loop
@pytest.mark.parametrize("layer_norms", ["train", "frozen"])
def test_locked_towers_keep_their_weights(one_rank: Path, layer_norms: str):
    """open_clip's --lock-image and --lock-text --lock-text-unlocked-layers 1: frozen weights are
    bit-identical after training, the last text layer and both projections train. The locked layers'
    LayerNorms train too unless --lock-text-freeze-layer-norm (off by default there)."""
    unchanged = json.loads((one_rank / ("lock" if layer_norms == "train" else "lock-frozen-ln") / "out.json").read_text())
    trunk = [n for n in unchanged if n.startswith("visual.trunk.")]
    assert trunk and all(unchanged[n] for n in trunk)
    locked = [n for n in unchanged if n.startswith(("text.transformer.embeddings.", "text.transformer.encoder.layer.0."))]
    norms = [n for n in locked if "LayerNorm" in n.split(".")]
    assert norms and all(unchanged[n] for n in locked if n not in norms)
    assert all(unchanged[n] for n in norms) if layer_norms == "frozen" else not any(unchanged[n] for n in norms)
    assert not all(unchanged[n] for n in unchanged if n.startswith("text.transformer.encoder.layer.1."))
    assert not any(unchanged[n] for n in unchanged if n.startswith(("visual.head.", "text.proj.")))


@pytest.mark.slow
def test_the_loop_seeds_each_rank_as_open_clip_does(two_ranks: Path):
    """open_clip's random_seed(seed, rank): each rank its own dropout masks and crops, rank 0 the segment's seed."""
    seeds = json.loads((two_ranks / "seeds/out.json").read_text())["seeds"]
    assert seeds == [segment_seed(0, 0), segment_seed(0, 0) + 1]


def test_every_rank_draws_its_own_random_numbers_and_a_rerun_the_same():
    """open_clip seeds each rank with seed + rank; one rank (and rank 0) keeps the segment's own seed."""
    def draws(rank: int, step: int = 50) -> torch.Tensor:
        torch.manual_seed(rank_seed(0, step, rank))
        return torch.rand(8)

    assert rank_seed(0, 50, 0) == segment_seed(0, 50)
    assert torch.equal(draws(1), draws(1)) and not torch.equal(draws(0), draws(1))
    assert not torch.equal(draws(1, step=100), draws(1))  # a resumed segment is a new stream, the same on a rerun


def test_learning_rate_follows_open_clips_cosine_schedule():
    """First step at lr/warmup (DeepSpeed's WarmupCosineLR starts at 0), then cosine to 0."""
    from open_clip_train.scheduler import cosine_lr

    for warmup, steps in ((5, 20), (0, 7), (2000, 117_188)):
        model = torch.nn.Linear(2, 2)
        ours = cosine_schedule(torch.optim.SGD(model.parameters(), lr=5e-4), warmup, steps)
        reference = cosine_lr(torch.optim.SGD(model.parameters(), lr=5e-4), 5e-4, warmup, steps)
        for step in sorted({0, 1, warmup - 1, warmup, warmup + 1, steps // 2, steps - 1} - {-1}):
            while ours.last_epoch < step:
                ours.optimizer.step()
                ours.step()
            assert ours.get_last_lr()[0] == pytest.approx(reference(step), rel=1e-9, abs=1e-15), (warmup, step)
    assert cosine_schedule(torch.optim.SGD(model.parameters(), lr=1.0), 10, 100).get_last_lr()[0] == 0.1


def test_epochs_resolve_to_steps_from_the_train_split(tmp_path):
    params = tmp_path / "params.yaml"
    base = {"seed": 0, "steps": None, "epochs": 2, "micro_batch_size": 8, "gradient_accumulation_steps": 2,
            "lr": 1e-3, "warmup_steps": 1, "weight_decay": 0.2, "betas": [0.9, 0.98], "eps": 1e-6, "grad_clip": 1.0,
            "precision": "fp32", "zero_stage": 0, "log_every": 1, "checkpoint_every": 0, "num_workers": 0,
            "prefetch_factor": 2}
    params.write_text(yaml.safe_dump({"pretrain": base}))
    assert TrainConfig.from_params(load_section("pretrain", params), train_samples=100, world_size=2).steps == 7  # ceil(2 x 100 / 32)
    # A global batch fixes the accumulation from the ranks: the same batch of negatives on any number of them.
    for world, accumulation in ((1, 4), (2, 2), (4, 1)):
        params.write_text(yaml.safe_dump({"pretrain": {**base, "global_batch_size": 32, "gradient_accumulation_steps": None}}))
        cfg = TrainConfig.from_params(load_section("pretrain", params), train_samples=100, world_size=world)
        assert (cfg.gradient_accumulation_steps, cfg.steps) == (accumulation, 7)
    for bad, match in (({"steps": 10}, "one of"), ({"epochs": None}, "one of"), ({"epochs": 0}, "epochs"),
                       ({"betas": [0.9, "x"]}, "betas"), ({"warmup_steps": -1}, "warmup_steps"),
                       ({"lock_text_unlocked_layers": -2}, "lock_text_unlocked_layers"),
                       ({"grad_clip": 0}, "or null for no clipping"),
                       ({"global_batch_size": 36}, "not a multiple of micro_batch_size x ranks = 8 x 1"),
                       ({"global_batch_size": 32}, "makes a batch of 16 on 1 rank.s., not global_batch_size 32: set it to 4")):
        params.write_text(yaml.safe_dump({"pretrain": {**base, **bad}}))
        with pytest.raises(ParamsError, match=match):
            TrainConfig.from_params(load_section("pretrain", params), train_samples=100)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    (root / "images").mkdir()
    rows = []
    for i in range(24):
        buf = io.BytesIO()
        Image.new("RGB", (48, 40), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)).save(buf, format="JPEG")
        rows.append(make_pair(f"PMC{i}.1", "F1", CAPTIONS[i % 3].split(".")[0] + f" panel {i}"))
        (root / rows[-1].image).write_bytes(buf.getvalue())
    write_split(rows, root, root / "shards", "train", shard_size=8, seed=0)
    return root / "shards"


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _losses(records: list[dict]) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records if "step" in r}


def _pretrain_run(model_dir: Path, root: Path, shards: Path, steps: int, every: int, *options: str) -> list[str]:
    """train_child's ``pretrain`` command for a run under ``root`` from ``model_dir``'s seeded init, as the stage's."""
    (root / "clip").mkdir(parents=True)
    for f in model_dir.iterdir():
        if f.name != WEIGHTS_NAME:
            (root / "clip" / f.name).write_bytes(f.read_bytes())
    return ["pretrain", str(root / "clip"), str(shards), str(root / "ckpt"), str(steps), str(every),
            str(root / "log.jsonl"), *options]


@pytest.mark.slow
def test_a_lost_rank_then_rerun_resumes_zero_3_accumulated_bf16_dropout_training_on_two_ranks(shards, tmp_path):
    """The paper's kind of run at toy size: two ranks, ZeRO-3's partitioned optimizer state, bf16, two
    micro-batches a step, dropout on. Rank 0 dies after step 5 (checkpoint at 3); the rerun resumes every
    rank's data stream, dropout draws, optimizer and schedule, and gives the straight run's losses and weights."""
    options = ("--batch", "8", "--zero", "3", "--precision", "bf16", "--accumulation", "2")
    dropout_dir = tiny_model_dir(tmp_path / "model", dropout=0.1)
    launch(_pretrain_run(dropout_dir, tmp_path / "straight", shards, 6, 3, *options), ranks=2)
    args = _pretrain_run(dropout_dir, tmp_path / "lost", shards, 6, 3, *options)
    launch([*args, "--crash-after", "5"], ranks=2, crashes=True)
    crashed = _losses(_log(tmp_path / "lost" / "log.jsonl"))
    assert sorted(crashed) == [1, 2, 3, 4, 5]
    launch(args, ranks=2)
    rerun = _log(tmp_path / "lost" / "log.jsonl")[len(crashed):]
    assert rerun[-1]["done"] and rerun[-1]["resumed_from"] == 3
    assert [p.name for p in (tmp_path / "lost" / "ckpt").iterdir() if p.is_dir()] == ["step6"]  # pruned by rank 0
    resumed = _losses(rerun)
    assert sorted(resumed) == [4, 5, 6]
    expected = _losses(_log(tmp_path / "straight" / "log.jsonl"))
    for step, loss in [*crashed.items(), *resumed.items()]:
        assert loss == pytest.approx(expected[step], rel=1e-6, abs=1e-7), f"step {step}"
    a, b = (load_file(tmp_path / run / "clip" / WEIGHTS_NAME) for run in ("straight", "lost"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_tokenizer_from_a_given_hf_dir_is_copied_as_it_is(model_dir, tmp_path):
    size = copy_tokenizer(model_dir, tmp_path / "tok", model_max_length=16)
    a, b = AutoTokenizer.from_pretrained(model_dir), AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert size == len(a) == len(b) and b.model_max_length == 16
    assert a(CAPTIONS[0])["input_ids"] == b(CAPTIONS[0])["input_ids"]


def test_checkpoints_resume_only_an_unfinished_run_of_the_same_recipe_and_data(tmp_path, capsys):
    state = RunState(tmp_path / "ckpt")

    def checkpointed(fingerprint: str, step: int) -> None:
        (tmp_path / "ckpt").mkdir(exist_ok=True)
        (tmp_path / "ckpt" / "fingerprint").write_text(fingerprint)
        (tmp_path / "ckpt" / "latest").write_text(f"step{step}")
        (tmp_path / "ckpt" / f"step{step}").mkdir(exist_ok=True)
        state.loss_log.write_text("".join(f'{{"step": {s}, "loss": {9 - s}}}\n' for s in (2, 4, 6)))

    checkpointed("recipe+data", 4)
    assert state.prepare("recipe+data", steps=8) == 4  # killed at step 6, checkpoint at 4: resume there
    # steps logged after the checkpoint are trained (and logged) again
    assert read_jsonl(state.loss_log) == [{"step": 2, "loss": 7}, {"step": 4, "loss": 5}]
    for fingerprint, step, why in (("recipe+new data", 4, "of another recipe"), ("recipe+data", 8, "finished")):
        checkpointed("recipe+data", step)  # other shards (or ranks); a finished run
        assert state.prepare(fingerprint, steps=8) == 0
        assert f"are of a run {why}" in capsys.readouterr().out  # said, not silent: hours of checkpoints go
        assert checkpoint_step(tmp_path / "ckpt") == 0
        assert (tmp_path / "ckpt" / "fingerprint").read_text() == fingerprint
        assert read_jsonl(state.loss_log) == []
    for latest in ("", "step", "step4x", "step6"):  # truncated, or naming a checkpoint that is not there
        checkpointed("recipe+data", 4)
        (tmp_path / "ckpt" / "latest").write_text(latest)
        assert state.prepare("recipe+data", steps=8) == 0, latest
        assert "names no checkpoint" in capsys.readouterr().out
        assert not (tmp_path / "ckpt" / "step4").exists() and checkpoint_step(tmp_path / "ckpt") == 0


def test_fingerprint_covers_the_train_shards(tmp_path):
    from .conftest import REPO

    for name in ("tokenizer", "shards"):
        (tmp_path / name).mkdir()
    (tmp_path / "tokenizer" / "tokenizer.json").write_text("{}")
    params = REPO / "params.yaml"
    spec, cfg = ModelSpec.from_params(load_section("model", params)), TrainConfig.from_params(load_section("pretrain", params), 100)
    prints = []
    for digest in ("aaa", "bbb", "aaa"):
        (tmp_path / "shards" / "manifest.json").write_text(json.dumps({"train": {"sha256": digest}}))
        prints.append(run_fingerprint(spec, cfg, (None, None), tmp_path / "tokenizer" / "tokenizer.json",
                                      tmp_path / "shards", 1))
    assert prints[0] == prints[2] != prints[1]

    def fingerprint(cfg=cfg, world=1, init=(None, None)):
        return run_fingerprint(spec, cfg, init, tmp_path / "tokenizer" / "tokenizer.json", tmp_path / "shards", world)

    base = fingerprint()
    assert fingerprint(world=2) != base  # another number of ranks: another data order and batch
    assert fingerprint(dataclasses.replace(cfg, compile=True, log_every=1, prefetch_factor=8)) == base
    assert fingerprint(dataclasses.replace(cfg, zero_stage=3 - cfg.zero_stage)) != base  # the checkpoint layout
    assert fingerprint(dataclasses.replace(cfg, lr=cfg.lr / 2)) != base


def test_fingerprint_covers_the_training_code_wherever_the_checkout_is(tmp_path):
    """A run killed, its loss fixed and rerun must start over; the same code in a moved checkout resumes."""
    from .conftest import REPO

    def digest(checkout: str, edit: bytes = b"") -> str:
        shutil.copytree(REPO / "src", tmp_path / checkout / "src", ignore=shutil.ignore_patterns("__pycache__"))
        loop = tmp_path / checkout / "src/biomedclip_factory/train/loop.py"
        loop.write_bytes(loop.read_bytes() + edit)
        code = "import stages.pretrain; from biomedclip_factory.train.resume import training_code_digest as d; print(d())"
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": f"{tmp_path / checkout / 'src'}{os.pathsep}{REPO}"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout.split()[-1]

    assert digest("a") == digest("b") != digest("c", b"\n# a fixed loss\n")


def test_a_moved_checkout_keeps_its_checkpoints_and_new_start_weights_restart(tmp_path, monkeypatch):
    """The starting model is known by its content: the same weights in a moved checkout are the same run;
    other weights copied over it (a corrected 224-px phase) are not, though the path is the same."""
    from .conftest import REPO

    params = REPO / "params.yaml"
    spec, cfg = ModelSpec.from_params(load_section("model", params)), TrainConfig.from_params(load_section("pretrain", params), 100)
    prints = []
    for checkout, weights in (("a", b"224-px run"), ("b", b"224-px run"), ("c", b"224-px run, corrected")):
        root = tmp_path / checkout
        for name in ("models/start", "tokenizer", "shards"):
            (root / name).mkdir(parents=True)
        (root / "models" / "start" / "open_clip_model.safetensors").write_bytes(weights)
        (root / "tokenizer" / "tokenizer.json").write_text("{}")
        monkeypatch.chdir(root)
        prints.append(run_fingerprint(spec, cfg, (root / "models" / "start", None), root / "tokenizer" / "tokenizer.json",
                                      root / "shards", 1))
    assert prints[0] == prints[1] != prints[2]


def test_a_resume_on_another_thread_count_says_it_will_not_be_bit_identical(model_dir, shards, tmp_path, capsys):
    """CPU float sums follow torch's thread count (the sample trained on 1 thread ends at other weights than on
    2): a resume on another count goes on, and says it is no longer the uninterrupted run."""
    work, checkpoints = tmp_path / "clip", tmp_path / "checkpoints"
    shutil.copytree(model_dir, work)
    threads = torch.get_num_threads()
    try:
        for steps, count in ((2, threads), (4, threads), (6, threads + 1)):
            torch.set_num_threads(count)
            with distributed():
                pretrain(create_model(work, load_weights=True), work, shards, checkpoints,
                         config(steps=steps, checkpoint_every=2), lambda step, values: None)
            # only the newest checkpoint is kept, across resumes too: a paper-scale run writes ~109 of ~3 GB
            assert [p.name for p in checkpoints.iterdir() if p.is_dir()] == [f"step{steps}"]
            assert checkpoint_step(checkpoints) == steps
            said = [line for line in capsys.readouterr().out.splitlines() if "torch threads" in line]
            assert said == ([] if count == threads else [
                f"pretrain: resuming from step 4 on {threads + 1} torch threads, the checkpoint was written on "
                f"{threads}: the run goes on, but not bit-identical to an uninterrupted one "
                f"(OMP_NUM_THREADS={threads} would make it so)"]), steps
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("workers", [0, 1])
def test_samples_skipped_in_loader_workers_reach_the_run_summary(model_dir, tmp_path, workers):
    """A corrupt image is skipped wherever it is decoded; with loader workers (the paper profile has 8) the
    skips happen in their processes, and the run's skipped_samples used to say 0."""
    root = tmp_path / "pairs"
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(8):
        buf = io.BytesIO()
        Image.new("RGB", (48, 40), ((i * 37) % 256, 0, 0)).save(buf, format="JPEG")
        rows.append(make_pair(f"PMC{i}.1", "F1", CAPTIONS[i % 3]))
        (root / rows[-1].image).write_bytes(b"\xff\xd8 not a jpeg" if i == 3 else buf.getvalue())
    write_split(rows, root, tmp_path / "shards", "train", shard_size=8, seed=0)
    work = shutil.copytree(model_dir, tmp_path / "clip")
    with distributed():
        result = pretrain(create_model(work, load_weights=True), work, tmp_path / "shards", tmp_path / "ckpt",
                          config(steps=2, num_workers=workers), lambda step, values: None)
    # the one shard is drawn again and again into the shuffle buffer: the corrupt sample, each time
    assert result.skipped_samples > 0 and result.metrics()["skipped_samples"] == result.skipped_samples


def _nan_at(model: torch.nn.Module, forwards: set[int]) -> None:
    """The image tower answers NaN at the given (1-based) forward passes: steps whose gradient is not finite."""
    calls = itertools.count(1)
    model.visual.register_forward_hook(lambda module, args, out: out * float("nan") if next(calls) in forwards else out)


def test_a_step_with_a_non_finite_gradient_is_skipped_counted_and_keeps_the_schedule(model_dir, shards, tmp_path):
    """ZeRO refuses the update of a non-finite gradient, and DeepSpeed then held the learning-rate schedule
    back a step, with nothing in the run's log: a run with such steps ended above its final rate. open_clip
    sets the rate from the step's index; the skip is counted in the log and the summary."""
    work, rows = shutil.copytree(model_dir, tmp_path / "clip"), []
    cfg = config(steps=4, zero_stage=2, offload_optimizer=True, warmup_steps=0)  # ZeRO's optimizer on one rank
    with distributed():
        model = create_model(work, load_weights=True)
        _nan_at(model, {2})
        result = pretrain(model, work, shards, tmp_path / "ckpt", cfg, lambda step, values: rows.append(values))
    assert [r["skipped_steps"] for r in rows] == [0, 1, 1, 1] and result.metrics()["skipped_steps"] == 1
    assert [math.isfinite(r["loss"]) for r in rows] == [True, False, True, True]
    cosine = [0.5 * (1 + math.cos(math.pi * step / 4)) * cfg.lr for step in range(4)]
    assert [r["lr"] for r in rows] == pytest.approx(cosine, rel=1e-6)
    assert all(torch.isfinite(w).all() for w in load_file(work / WEIGHTS_NAME).values())


def test_a_loss_gone_non_finite_stops_the_run_before_its_checkpoint(model_dir, shards, tmp_path):
    """Without ZeRO the update takes a non-finite gradient into the weights: every later loss is NaN, and a
    checkpoint of them would be resumed for ever. The run stops at the segment's end, keeping the last good one."""
    work = shutil.copytree(model_dir, tmp_path / "clip")
    with distributed():
        model = create_model(work, load_weights=True)
        _nan_at(model, {3})
        with pytest.raises(DivergedError, match=r"the loss is nan at step 4; steps 3-4 are not checkpointed \(the "
                                                r"checkpoint of step 2 is kept\)"):
            pretrain(model, work, shards, tmp_path / "ckpt", config(steps=4, checkpoint_every=2), lambda *_: None)
    assert checkpoint_step(tmp_path / "ckpt") == 2
