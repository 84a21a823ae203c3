"""The model dir: open_clip layout, dynamic padding equal to full padding, relocation."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from biomedclip_factory.model.build import ModelSpec, create_model, init_model_dir, relocate
from biomedclip_factory.model.text import tokenize
from biomedclip_factory.model.tokenizer import train_wordpiece
from biomedclip_factory.shards.transform import to_model_input
from biomedclip_factory.train.ds_config import TextLayout, TrainConfig, deepspeed_config
from biomedclip_factory.train.loop import MAX_LOGIT_SCALE
from biomedclip_factory.train.packing import check_packable

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


def test_training_evaluation_and_serving_tokenise_as_open_clip(model_dir):
    """open_clip's HFTokenizer (how the released BiomedCLIP is used) cleans text first: curly quotes,
    HTML entities, thin and runs of spaces. The collator the loader and evaluation use must give its ids."""
    from open_clip.tokenizer import HFTokenizer

    from biomedclip_factory.evaluate.embed import Encoder
    from biomedclip_factory.shards.loader import CaptionCollator

    texts = ["Descemet\u2019s \u201cmembrane\u201d at 53.2\u200aGy", "CT &amp;lt; 5\u2009mm,\n\tlobe", CAPTIONS[1]]
    reference = HFTokenizer(str(model_dir), context_length=32)(texts)
    _, ids, _ = CaptionCollator(AutoTokenizer.from_pretrained(model_dir), 32)([(torch.zeros(1), t, {}) for t in texts])
    assert torch.equal(ids, reference[:, :ids.shape[1]]) and not reference[:, ids.shape[1]:].any()
    assert torch.equal(Encoder.load(model_dir, torch.device("cpu")).tokenize(texts), ids)
    raw = AutoTokenizer.from_pretrained(model_dir)(texts[:2], padding="longest", return_tensors="pt")["input_ids"]
    assert not torch.equal(raw, ids[:2, :raw.shape[1]])  # the texts above are ones cleaning changes


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
    relocate(copy.resolve())  # for plain open_clip users, from any working directory
    text_cfg = json.loads((copy / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
    assert text_cfg["hf_model_name"] == text_cfg["hf_tokenizer_name"] == str(copy.resolve())


def test_biomedclip_profile_builds_the_papers_architecture(tmp_path):
    """params/biomedclip.yaml validates in every stage reader and builds BiomedCLIP's shape (~196M params)."""
    from biomedclip_factory.evaluate.tasks import Suite
    from biomedclip_factory.task_runner import mapper_from_params

    from biomedclip_factory.params import load_section

    from .conftest import REPO

    profile = REPO / "params" / "biomedclip.yaml"
    spec = ModelSpec.from_params(load_section("model", profile))
    cfg = TrainConfig.from_params(load_section("pretrain", profile), train_samples=13_900_000, world_size=8)
    # Supp. Table 9: AdamW (0.9, 0.98), eps 1e-6, wd 0.2, lr 5e-4, 2000 warm-up steps, bf16, seed 0, no clipping
    assert (cfg.precision, cfg.warmup_steps, cfg.betas, cfg.eps, cfg.lr, cfg.weight_decay, cfg.seed, cfg.grad_clip) == (
        "bf16", 2000, (0.9, 0.98), 1e-6, 5e-4, 0.2, 0, None)
    assert deepspeed_config(cfg, 8)["gradient_clipping"] == 0.0  # DeepSpeed's "no clipping"
    assert cfg.steps == 108_594  # the paper's 32 epochs of its 13.9M train pairs at 4096 a step (512 x 8 ranks)
    assert cfg.gradient_accumulation_steps == 1
    one_gpu = TrainConfig.from_params(load_section("pretrain", profile), train_samples=13_900_000, world_size=1)
    assert (one_gpu.gradient_accumulation_steps, one_gpu.steps) == (8, 108_594)  # still 4096 a step
    assert {t.name for t in Suite.from_params(load_section("evaluate", profile), REPO).zeroshot} == {
        "pcam", "lc25000_lung", "lc25000_colon", "tcga_til", "rsna_pneumonia"}
    align_on_processes = mapper_from_params(load_section("align", profile), "align")
    assert list(align_on_processes(abs, [-1, -2])) == [1, 2]
    train_wordpiece(CAPTIONS, tmp_path / "tok", 30522, 1, True, 256)
    model = init_model_dir(spec, tmp_path / "tok", tmp_path / "clip")  # the text sizes a BERT-base dir would give
    written = json.loads((tmp_path / "clip" / "open_clip_config.json").read_text())
    config = written["model_cfg"]
    assert config["vision_cfg"]["image_size"] == 224 and config["text_cfg"]["context_length"] == 256
    assert config["text_cfg"]["hf_pooler_type"] == "cls_last_hidden_state_pooler" and config["embed_dim"] == 512
    # the released open_clip_config.json: timm ViT without its own pooling, linear image and MLP text projections
    assert {k: config["vision_cfg"][k] for k in ("timm_model_name", "timm_pool", "timm_proj", "timm_model_pretrained")} == {
        "timm_model_name": "vit_base_patch16_224", "timm_pool": "", "timm_proj": "linear", "timm_model_pretrained": False}
    assert config["text_cfg"]["hf_proj_type"] == "mlp"
    assert float(model.logit_scale) == pytest.approx(math.log(1 / 0.07))  # CLIP's initial temperature
    assert MAX_LOGIT_SCALE == math.log(100)  # open_clip_train clamps the scale to [0, ln 100] after each step
    # the released preprocess: OpenAI CLIP's mean and std (literally), open_clip's bicubic shortest-side resize
    assert written["preprocess_cfg"] == {"mean": [0.48145466, 0.4578275, 0.40821073],
                                         "std": [0.26862954, 0.26130258, 0.27577711],
                                         "interpolation": "bicubic", "resize_mode": "shortest"}
    pixels = torch.arange(3 * 4 * 4, dtype=torch.uint8).reshape(1, 3, 4, 4) * 5
    mean, std = (torch.tensor(written["preprocess_cfg"][k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    torch.testing.assert_close(to_model_input(pixels), (pixels / 255 - mean) / std)  # training normalises alike
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "clip")
    ids = tokenize(tokenizer, [" ".join(CAPTIONS * 20)], tokenizer.model_max_length)["input_ids"][0]
    assert tokenizer.model_max_length == 256 and len(ids) == 256 and ids[-1] == tokenizer.sep_token_id  # truncated, closed
    assert cfg.text_layout(spec.context_length) == TextLayout(pack_width=256)
    check_packable(model.text)  # the profile packs captions: its tower must be one packing reproduces
    n_params = sum(p.numel() for p in model.parameters())
    # ViT-B/16 (86M) + BERT-base (110M with a 30522 vocab; ours is smaller, trained on 9 captions) + heads
    assert 85e6 + 85e6 < n_params < 200e6


def _profile_pointing_at(tmp_path: Path, bert_dir: Path) -> Path:
    """params/biomedclip.yaml with its BiomedBERT dir replaced by ``bert_dir`` (nothing else changed)."""
    from .conftest import REPO

    text = (REPO / "params" / "biomedclip.yaml").read_text()
    assert text.count(BIOMEDBERT) == 2  # tokenizer.source and model.text.init_from: one dir for both
    (tmp_path / "params.yaml").write_text(text.replace(BIOMEDBERT, str(bert_dir)))
    return tmp_path / "params.yaml"


BIOMEDBERT = "/models/BiomedBERT-base-uncased-abstract"


def test_biomedclip_profile_takes_tokenizer_and_text_tower_from_one_biomedbert_dir(model_dir, tmp_path):
    """A BiomedBERT-layout dir (config.json, vocab.txt, weights, saved by transformers) is both the
    vocabulary and the text tower's starting weights; a missing one is one line naming the key."""
    from transformers import BertConfig, BertModel

    from biomedclip_factory.errors import ParamsError
    from biomedclip_factory.model.sources import init_sources, resolve_pretrained_dir
    from biomedclip_factory.model.tokenizer import copy_tokenizer
    from biomedclip_factory.params import load_section

    bert_dir = tmp_path / "BiomedBERT"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(3)
    bert = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=96, max_position_embeddings=256))
    bert.save_pretrained(bert_dir)  # the hub snapshot's layout: config.json, weights, vocab.txt and nothing else
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    (bert_dir / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab))
    assert {f.name for f in bert_dir.iterdir()} == {"config.json", "vocab.txt", "model.safetensors"}

    profile = _profile_pointing_at(tmp_path, bert_dir)
    source = load_section("tokenizer", profile).get("source", str)
    copy_tokenizer(resolve_pretrained_dir(source, "tokenizer.source", tmp_path), tmp_path / "tok", 256)
    caption = "Axial CT of the chest shows a nodule"
    assert AutoTokenizer.from_pretrained(tmp_path / "tok")(caption)["input_ids"] == tokenizer(caption)["input_ids"]
    model_section = load_section("model", profile)
    init_dir, text_init = init_sources(model_section, tmp_path)
    assert init_dir is None and text_init == bert_dir
    text = init_model_dir(ModelSpec.from_params(model_section), tmp_path / "tok", tmp_path / "clip", text_init).text.transformer
    assert (text.config.hidden_size, text.config.num_hidden_layers) == (48, 2)  # from the dir, not the profile
    for name, value in bert.state_dict().items():
        if not name.startswith("pooler."):
            torch.testing.assert_close(text.state_dict()[name], value, msg=name)

    missing = _profile_pointing_at(tmp_path, tmp_path / "nowhere")
    with pytest.raises(ParamsError) as err:
        resolve_pretrained_dir(load_section("tokenizer", missing).get("source", str), "tokenizer.source", tmp_path)
    assert "'tokenizer.source'" in str(err.value) and "nowhere" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ParamsError, match="'model.text.init_from'.*nowhere"):
        init_sources(load_section("model", missing), tmp_path)


def test_continuing_at_384_px_resamples_the_position_embeddings(model_dir, tmp_path):
    """The paper's second phase: the 224-px ViT continued at 384 px (timm's same ViT at another size)."""
    import open_clip
    from safetensors.torch import load_file
    from timm.layers import resample_abs_pos_embed

    from biomedclip_factory.errors import ParamsError
    from biomedclip_factory.model.build import WEIGHTS_NAME, init_from_model_dir, save_weights

    spec = ModelSpec(embed_dim=16, timm_model_name="vit_tiny_patch16_224", context_length=32, text_layers=1,
                     text_width=32, text_heads=2, text_mlp_ratio=2)
    torch.manual_seed(0)
    save_weights(init_model_dir(spec, model_dir, tmp_path / "224"), tmp_path / "224")
    save_weights(init_from_model_dir(tmp_path / "224", model_dir, tmp_path / "384", "vit_tiny_patch16_384"),
                 tmp_path / "384")  # the model starts in memory; pretraining writes it at its end
    config = json.loads((tmp_path / "384" / "open_clip_config.json").read_text())["model_cfg"]["vision_cfg"]
    assert (config["timm_model_name"], config["image_size"]) == ("vit_tiny_patch16_384", 384)
    old, new = load_file(tmp_path / "224" / WEIGHTS_NAME), load_file(tmp_path / "384" / WEIGHTS_NAME)
    assert new["visual.trunk.pos_embed"].shape == (1, 1 + 24 * 24, 192)
    torch.testing.assert_close(new["visual.trunk.pos_embed"],
                               resample_abs_pos_embed(old["visual.trunk.pos_embed"], [24, 24], num_prefix_tokens=1))
    assert all(torch.equal(old[k], new[k]) for k in old if k != "visual.trunk.pos_embed")
    plain = open_clip.create_model(f"local-dir:{tmp_path / '384'}", pretrained_text=False).eval()  # plain open_clip
    with torch.no_grad():
        ours = create_model(tmp_path / "384", load_weights=True).eval().encode_image(torch.rand(1, 3, 384, 384))
        assert ours.shape == (1, 16) and plain.visual.image_size == (384, 384)
    with pytest.raises(ParamsError, match="must be 'vit_tiny_patch16_224'"):
        init_from_model_dir(tmp_path / "224", model_dir, tmp_path / "bad", "test_vit")


def test_the_384_profile_continues_the_224_model(tmp_path):
    from biomedclip_factory.model.sources import init_sources
    from biomedclip_factory.params import load_section

    from .conftest import REPO

    profile = REPO / "params" / "biomedclip-384.yaml"
    cfg = TrainConfig.from_params(load_section("pretrain", profile), train_samples=13_900_000, world_size=8)
    assert deepspeed_config(cfg, 8)["train_batch_size"] == 4096  # the paper's batch at 384 px too
    assert (cfg.precision, cfg.betas, cfg.eps, cfg.weight_decay, cfg.grad_clip) == ("bf16", (0.9, 0.98), 1e-6, 0.2, None)
    model = load_section("model", profile)
    assert ModelSpec.from_params(model).timm_model_name == "vit_base_patch16_384"
    assert model.get("init_from", str) == "local-dir:models/clip-224"
    assert load_section("tokenizer", profile).get("source", str) == "models/clip-224"
    (tmp_path / "models" / "clip-224").mkdir(parents=True)
    (tmp_path / "models" / "clip-224" / "open_clip_config.json").write_text("{}")
    assert init_sources(model, tmp_path) == (tmp_path / "models" / "clip-224", None)


def _hub_snapshot(model_dir: Path, dest: Path) -> Path:
    """The released BiomedCLIP's layout, made from a model this project trained: open_clip's config naming
    the text tower by hub id, weights as open_clip's ``open_clip_pytorch_model.bin``; plus the local BERT dir."""
    config = json.loads((model_dir / "open_clip_config.json").read_text())
    hub = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
    config["model_cfg"]["text_cfg"].update(hf_model_name=hub, hf_tokenizer_name=hub)
    (dest / "snapshot").mkdir(parents=True)
    (dest / "snapshot" / "open_clip_config.json").write_text(json.dumps(config))
    torch.save(create_model(model_dir, load_weights=True).state_dict(), dest / "snapshot" / "open_clip_pytorch_model.bin")
    (dest / "bert").mkdir()
    shutil.copy(model_dir / "config.json", dest / "bert" / "config.json")
    vocab = sorted(AutoTokenizer.from_pretrained(model_dir).get_vocab().items(), key=lambda item: item[1])
    (dest / "bert" / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab))
    return dest / "snapshot"


def test_a_hub_snapshot_converts_to_a_model_dir_with_identical_embeddings(model_dir, tmp_path):
    from biomedclip_factory.errors import DataError, ParamsError
    from biomedclip_factory.evaluate.models import load_encoder
    from biomedclip_factory.model.build import init_from_model_dir
    from biomedclip_factory.model.sources import init_sources
    from biomedclip_factory.model.snapshot import convert_snapshot, is_snapshot
    from biomedclip_factory.params import Section

    snapshot = _hub_snapshot(model_dir, tmp_path)
    assert is_snapshot(snapshot) and not is_snapshot(model_dir)
    convert_snapshot(snapshot, tmp_path / "bert", tmp_path / "converted", "model.text.init_from")
    image, text = torch.rand(2, 3, 160, 160), torch.tensor([[2, 10, 11, 3], [2, 12, 3, 0]])
    a, b = create_model(model_dir, load_weights=True).eval(), create_model(tmp_path / "converted", True).eval()
    with torch.no_grad():
        torch.testing.assert_close(b.encode_image(image), a.encode_image(image), rtol=0, atol=0)
        torch.testing.assert_close(b.encode_text(text), a.encode_text(text), rtol=0, atol=0)
    caption = "Axial CT of the chest"
    assert AutoTokenizer.from_pretrained(tmp_path / "converted")(caption)["input_ids"] == \
        AutoTokenizer.from_pretrained(model_dir)(caption)["input_ids"]

    ours = load_encoder(f"local-dir:{model_dir}", tmp_path)  # evaluation takes the snapshot with its BERT dir
    released = load_encoder(f"local-dir:{snapshot}", tmp_path, "bert")
    assert torch.equal(released.embed_texts([caption]), ours.embed_texts([caption]))
    with pytest.raises(DataError, match="hub snapshot whose text tower is 'microsoft/BiomedNLP"):
        load_encoder(f"local-dir:{snapshot}", tmp_path)

    model = Section({"init_from": f"local-dir:{snapshot}", "text": {"init_from": str(tmp_path / "bert")}}, "model")
    assert init_sources(model, tmp_path) == (snapshot, tmp_path / "bert")  # both: the snapshot and its BERT
    training = init_from_model_dir(tmp_path / "converted", model_dir, tmp_path / "training")  # what pretrain starts from
    with torch.no_grad():
        torch.testing.assert_close(training.eval().encode_image(image),
                                   a.encode_image(image), rtol=0, atol=0)
    both = Section({"init_from": f"local-dir:{model_dir}", "text": {"init_from": str(tmp_path / "bert")}}, "model")
    with pytest.raises(ParamsError, match="not both"):
        init_sources(both, tmp_path)
