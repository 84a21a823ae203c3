"""Evaluation on a GPU (bf16 autocast, decoding workers), against the CPU path CI runs.

Apart so that it imports only the encoder: the GPU machine's wheelhouse (scripts/device_check.sh)
carries no scikit-learn.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CI has none; scripts/device_check.sh runs it)")
def test_evaluation_on_the_gpu_in_bf16_embeds_like_the_cpu(tmp_path):
    from biomedclip_factory.evaluate.embed import Encoder

    from .conftest import CAPTIONS, tiny_model_dir

    model_dir = tiny_model_dir(tmp_path / "m")
    cpu, gpu = Encoder.load(model_dir, torch.device("cpu")), Encoder.load(model_dir)
    assert gpu.device.type == "cuda"
    files = []
    for i in range(5):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(files[-1])
    for a, b in ((cpu.embed_files(files).vectors, replace(gpu, workers=2).embed_files(files).vectors),
                 (cpu.embed_texts(CAPTIONS), gpu.embed_texts(CAPTIONS))):
        assert b.dtype == torch.float32 and b.device.type == "cpu"
        assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99  # bf16 keeps ~3 significant digits
