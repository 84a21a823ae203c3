"""The GPU paths, against the CPU paths CI runs: ZeRO stages and evaluation in bf16.

Apart, with light imports, because scripts/device_check.sh runs them on a machine whose wheelhouse
carries no scikit-learn, pandas or pyarrow. Skipped without CUDA.
"""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from .train_child import launch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CI has none; scripts/device_check.sh runs it)")
def test_evaluation_on_the_gpu_in_bf16_embeds_like_the_cpu(tmp_path):
    from biomedclip_factory.evaluate.embed import Encoder

    from .conftest import CAPTIONS, tiny_model_dir

    model_dir = tiny_model_dir(tmp_path / "m")
    cpu, gpu = Encoder.load(model_dir, torch.device("cpu")), replace(Encoder.load(model_dir), precision="amp_bf16")
    assert gpu.device.type == "cuda"
    files = []
    for i in range(5):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(files[-1])
    for a, b in ((cpu.embed_files(files).vectors, replace(gpu, workers=2).embed_files(files).vectors),
                 (cpu.embed_texts(CAPTIONS), gpu.embed_texts(CAPTIONS))):
        assert b.dtype == torch.float32 and b.device.type == "cpu"
        assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99  # bf16 keeps ~3 significant digits


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CI has none; scripts/device_check.sh runs it)")
def test_zero_stages_on_gpus_in_bf16_match_stage_0(tmp_path):
    from .conftest import tiny_model_dir

    model_dir = tiny_model_dir(tmp_path / "m", dropout=0.0)  # ranks would draw other masks than one process
    ranks = torch.cuda.device_count()
    launch(["zero", str(model_dir), str(tmp_path / "gpu.json"), "0+bf16", "1+bf16", "2+bf16", "3+bf16"], ranks=ranks)
    runs = json.loads((tmp_path / "gpu.json").read_text())["results"]
    for variant, run in runs.items():  # bf16 keeps ~3 significant digits
        torch.testing.assert_close(torch.tensor(run["losses"]), torch.tensor(runs["0+bf16"]["losses"]),
                                   rtol=2e-2, atol=2e-2, msg=variant)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CI has none; scripts/device_check.sh runs it)")
@pytest.mark.parametrize("layout", ["3 groups", "packed"])
def test_a_training_step_never_waits_for_the_gpu(tmp_path, monkeypatch, layout):
    """The host queues step after step: no copy from pageable memory, no value read back, nothing that
    synchronises (torch's sync debug mode makes any such call an error; an explicit device synchronize, which
    that mode lets through, is made one). Copies from pageable memory it cannot see: the loader pins its
    batches (``train_batches``), as these are. As the profile trains: compiled
    towers (uncompiled, transformers' BERT reads its padding mask back on every call), pinned uint8 images
    and length groups or packed captions. A first pass over the batches compiles every shape."""
    from biomedclip_factory.model.build import create_model
    from biomedclip_factory.train.ds_config import TextLayout
    from biomedclip_factory.train.loop import build_engine, contrastive_loss, train_step
    from biomedclip_factory.train.process_group import distributed

    from .conftest import tiny_model_dir
    from .train_child import config, global_batches

    model_dir = tiny_model_dir(tmp_path / "m")
    text_layout = TextLayout(buckets=3) if layout == "3 groups" else TextLayout(pack_width=32)
    with distributed():
        engine, _ = build_engine(create_model(model_dir, load_weights=True),
                                 config(micro_batch_size=8, precision="bf16", text_buckets=text_layout.buckets,
                                        text_packing=bool(text_layout.pack_width), steps=10, compile=True), 1)
        batches = [((images * 40 + 128).clamp(0, 255).to(torch.uint8).pin_memory(), texts.pin_memory())
                   for images, texts in global_batches(engine.module.text.vocab_size, 160)]
        stream = iter(batches * 2)
        for _ in batches:
            train_step(engine, contrastive_loss(1), stream, 1, 0, text_layout)
        torch.cuda.synchronize()

        def refuse() -> None:
            raise AssertionError("a training step synchronised the device")

        monkeypatch.setattr(torch.cuda, "synchronize", lambda *_: refuse())
        torch.cuda.set_sync_debug_mode("error")
        try:
            results = [train_step(engine, contrastive_loss(1), stream, 1, 0, text_layout) for _ in batches]
        finally:
            torch.cuda.set_sync_debug_mode("default")
            monkeypatch.undo()
        assert all(torch.isfinite(torch.tensor([r.loss for r in results])))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CI has none; scripts/device_check.sh runs it)")
def test_packed_captions_embed_like_padded_ones_on_the_gpu(tmp_path):
    """On the GPU the dense block-diagonal mask sends SDPA to other kernels than the CPU's. Packed features
    must be the padded ones there: to rounding in fp32 (a mask that let captions see each other moves the
    tiny tower's features by ~1e-2, relatively), and within bf16's rounding under the profile's autocast."""
    from biomedclip_factory.model.build import create_model
    from biomedclip_factory.train.packing import pack_captions, packed_text_features

    from .conftest import tiny_model_dir
    from .train_child import global_batches

    model = create_model(tiny_model_dir(tmp_path / "m", dropout=0.0), load_weights=True).eval().cuda()
    texts = torch.cat([t for _, t in global_batches(model.text.vocab_size, 160)])
    packed = pack_captions(texts.pin_memory(), 0, 32, torch.device("cuda"), pin=True)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # an engine built earlier in this process turned TF32 on
    try:
        for dtype, tolerance in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
            with torch.no_grad(), torch.autocast("cuda", dtype, enabled=dtype != torch.float32):
                padded, ours = model.text(texts.cuda()).float(), packed_text_features(model.text, packed).float()
            error = ((ours - padded).norm(dim=1) / padded.norm(dim=1)).max().item()
            assert error < tolerance, (dtype, error)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
