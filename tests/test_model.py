"""The model dir: open_clip layout, dynamic padding equal to full padding, relocation."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from biomedclip_factory.model.build import ModelSpec, create_model, init_model_dir, save_weights
from biomedclip_factory.model.tokenizer import train_wordpiece

CAPTIONS = ["Axial CT of the chest shows a nodule in the right upper lobe.",
            "Histology of the liver, haematoxylin and eosin stain, scale bar 50 µm.",
            "Kaplan–Meier survival curves for the two cohorts."] * 3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("model")
    train_wordpiece(CAPTIONS, root / "tok", vocab_size=300, min_frequency=1, lowercase=True, model_max_length=32)
    spec = ModelSpec(embed_dim=32, timm_model_name="test_vit", context_length=32, text_layers=2, text_width=64,
                     text_heads=2, text_mlp_ratio=2)
    init_model_dir(spec, root / "tok", root / "clip")
    torch.manual_seed(0)
    save_weights(create_model(root / "clip", load_weights=False), root / "clip")
    return root / "clip"


def test_dynamic_padding_gives_the_same_text_embeddings(model_dir):
    model = create_model(model_dir, load_weights=True).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = ["a nodule", CAPTIONS[1]]
    dynamic = tok(texts, padding="longest", truncation=True, max_length=32, return_tensors="pt")["input_ids"]
    full = tok(texts, padding="max_length", truncation=True, max_length=32, return_tensors="pt")["input_ids"]
    assert dynamic.shape[1] < full.shape[1] == 32
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(dynamic), model.encode_text(full), rtol=1e-5, atol=1e-5)


def test_copied_model_dir_is_relocated_and_loads_the_same(model_dir, tmp_path):
    copy = tmp_path / "elsewhere"
    shutil.copytree(model_dir, copy)
    shutil.rmtree(model_dir.parent / "tok", ignore_errors=True)
    a, b = create_model(model_dir, load_weights=True).eval(), create_model(copy, load_weights=True).eval()
    image = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(a.encode_image(image), b.encode_image(image))
    assert str(copy.resolve()) in (copy / "open_clip_config.json").read_text()
