"""The model dir: open_clip layout, dynamic padding equal to full padding, relocation."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from biomedclip_factory.model.build import create_model, init_model_dir, relocate
from biomedclip_factory.model.tokenizer import train_wordpiece

from .conftest import CAPTIONS, tiny_model_dir



@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("model"))


def test_dynamic_padding_gives_the_same_text_embeddings(model_dir):
    model = create_model(model_dir, load_weights=True).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = ["a nodule", CAPTIONS[1]]
    dynamic = tok(texts, padding="longest", truncation=True, max_length=32, return_tensors="pt")["input_ids"]
    full = tok(texts, padding="max_length", truncation=True, max_length=32, return_tensors="pt")["input_ids"]
    assert dynamic.shape[1] < full.shape[1] == 32
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(dynamic), model.encode_text(full), rtol=1e-5, atol=1e-5)


def test_copied_model_dir_loads_the_same_without_being_written(model_dir, tmp_path):
    copy = tmp_path / "elsewhere"
    shutil.copytree(model_dir, copy)
    before = {f.name: f.read_bytes() for f in copy.iterdir()}
    a, b = create_model(model_dir, load_weights=True).eval(), create_model(copy, load_weights=True).eval()
    image, text = torch.rand(1, 3, 160, 160), torch.tensor([[2, 10, 11, 3]])
    with torch.no_grad():
        torch.testing.assert_close(a.encode_image(image), b.encode_image(image))
        torch.testing.assert_close(a.encode_text(text), b.encode_text(text))
    assert {f.name: f.read_bytes() for f in copy.iterdir()} == before  # a DVC output is never modified
    relocate(copy)  # for plain open_clip users
    assert str(copy.resolve()) in (copy / "open_clip_config.json").read_text()


def test_biomedclip_profile_builds_the_papers_architecture(tmp_path):
    """params/biomedclip.yaml validates in every stage reader and builds BiomedCLIP's shape (~196M params)."""
    from stages.evaluate import zeroshot_tasks
    from stages.pretrain import model_spec, train_config
    from stages.task_runner import mapper_from_params

    from biomedclip_factory.params import load_section

    from .conftest import REPO

    profile = REPO / "params" / "biomedclip.yaml"
    spec = model_spec(load_section("model", profile))
    cfg = train_config(load_section("pretrain", profile))
    assert (cfg.precision, cfg.warmup_steps, cfg.betas, cfg.eps) == ("bf16", 2000, (0.9, 0.98), 1e-6)
    assert {t.name for t in zeroshot_tasks(load_section("evaluate", profile))} == {
        "pcam", "lc25000_lung", "lc25000_colon", "tcga_til", "rsna_pneumonia"}
    align_on_processes = mapper_from_params(load_section("align", profile), "align")
    assert list(align_on_processes(abs, [-1, -2])) == [1, 2]
    train_wordpiece(CAPTIONS, tmp_path / "tok", 30522, 1, True, 256)
    init_model_dir(spec, tmp_path / "tok", tmp_path / "clip")
    config = json.loads((tmp_path / "clip" / "open_clip_config.json").read_text())["model_cfg"]
    assert config["vision_cfg"]["image_size"] == 224 and config["text_cfg"]["context_length"] == 256
    assert config["text_cfg"]["hf_pooler_type"] == "cls_last_hidden_state_pooler" and config["embed_dim"] == 512
    model = create_model(tmp_path / "clip", load_weights=False)
    n_params = sum(p.numel() for p in model.parameters())
    # ViT-B/16 (86M) + BERT-base (110M with a 30522 vocab; ours is smaller, trained on 9 captions) + heads
    assert 85e6 + 85e6 < n_params < 200e6
