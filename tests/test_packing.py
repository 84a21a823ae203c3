"""Packed captions (``pretrain.text_packing``): every caption kept whole, features and gradients unchanged."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from open_clip.hf_model import MeanPooler

from biomedclip_factory.errors import ParamsError
from biomedclip_factory.model.build import create_model
from biomedclip_factory.params import Section
from biomedclip_factory.train.ds_config import TextLayout, TrainConfig
from biomedclip_factory.train.loop import accept_text_layouts
from biomedclip_factory.train.packing import check_packable, first_fit_rows, pack_captions

from .conftest import REPO, tiny_model_dir
from .train_child import assert_same_step, loss_and_grads

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("packing"), dropout=0.0)


def _captions(lengths: list[int], width: int, seed: int = 0) -> torch.Tensor:
    """Right-padded token rows (pad 0) of the given lengths, in the given (unsorted) order."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        tokens[row, :n] = torch.randint(5, 100, (n,), generator=g)
    return tokens


@pytest.mark.parametrize("longest,slack", [(256, 11 / 9), (100, 1.01)])
def test_first_fit_puts_every_caption_in_one_row_without_overlap_and_near_the_fewest_rows(longest, slack):
    """First-fit decreasing's guarantee (11/9 of the fewest rows, plus one) over lengths up to the context;
    captions mostly shorter than half a row, as real ones are, fill the rows almost to the token."""
    lengths = np.random.default_rng(0).integers(2, longest + 1, 512)
    rows, offsets = first_fit_rows(lengths, 256)
    cells = np.zeros((rows.max() + 1, 256), dtype=int)
    for row, offset, n in zip(rows, offsets, lengths):
        cells[row, offset:offset + n] += 1
    assert offsets.min() >= 0 and (offsets + lengths).max() <= 256  # each caption whole inside its row
    assert cells.max() == 1 and cells.sum() == lengths.sum()  # no token shares a cell
    fewest = -(-lengths.sum() // 256)
    assert fewest <= rows.max() + 1 <= slack * fewest + 1
    again = first_fit_rows(lengths, 256)
    assert (again[0] == rows).all() and (again[1] == offsets).all()
    with pytest.raises(ValueError, match=r"\[1, 256\]"):
        first_fit_rows(np.array([3, 257]), 256)


def test_packed_rows_hold_each_captions_tokens_at_its_own_positions():
    lengths = [5, 32, 3, 17, 9, 2, 30]
    tokens = _captions(lengths, 32)
    packed = pack_captions(tokens, 0, 32, CPU)
    ids, positions = packed.input_ids.flatten(), packed.position_ids.flatten()
    for i, n in enumerate(lengths):
        start = int(packed.cls_index[i])
        assert ids[start:start + n].tolist() == tokens[i, :n].tolist()
        assert positions[start:start + n].tolist() == list(range(n))
    assert int((ids != 0).sum()) == sum(lengths) and packed.input_ids.shape == (4, 32)  # 98 tokens, 4 rows of 32
    segments = packed.segments
    for i, n in enumerate(lengths):  # a caption is one segment, shared with nothing else in its row
        row, col = divmod(int(packed.cls_index[i]), 32)
        assert (segments[row] == segments[row, col]).sum() == n


@pytest.mark.parametrize("checkpointing", [False, True])
def test_packing_changes_the_work_not_the_loss_or_gradients(model_dir, checkpointing):
    """The whole batch in 2 packed rows instead of 8 padded ones, in any order, a caption at the full
    context and one with a pad id inside (a literal "[PAD]" in its text) included: the loss and every
    gradient are the padded batch's, with activation checkpointing too (the 384-px profile's). Dropout
    off: its masks are drawn per shape."""
    lengths = [7, 32, 3, 12, 4, 20, 4, 9]
    tokens, images = _captions(lengths, 32, seed=3), torch.randn(8, 3, 160, 160, generator=torch.Generator().manual_seed(3))
    tokens[3, 5] = 0
    packed = pack_captions(tokens, 0, 64, CPU)
    assert packed.input_ids.shape == (2, 64)
    results = []
    for text_input in (tokens, packed):
        model = create_model(model_dir, load_weights=True).eval()
        if checkpointing:  # open_clip's HF tower *enables* checkpointing on set_grad_checkpointing(False)
            model.set_grad_checkpointing()
        accept_text_layouts(model)
        results.append(loss_and_grads(model, images, text_input))
    # The inner pad leaves a sum out rather than adding a masked zero: rounding moves by ~1e-5 (fp64: < 1e-6)
    assert_same_step(results, atol=2e-5)


def test_packing_refuses_a_caption_that_does_not_start_the_row():
    tokens = _captions([4, 6], 8)
    tokens[1] = torch.roll(tokens[1], 2)  # left-padded: its CLS would not be at position 0
    with pytest.raises(ValueError, match="column 0.*row 1 starts with padding"):
        pack_captions(tokens, 0, 8, CPU)


def test_packing_needs_a_cls_pooled_sdpa_tower(model_dir):
    model = create_model(model_dir, load_weights=True)
    check_packable(model.text)
    model.text.transformer.set_attn_implementation("eager")  # its mask is additive: a boolean one would be added
    with pytest.raises(ParamsError, match="'sdpa'.*'eager'"):
        check_packable(model.text)
    model = create_model(model_dir, load_weights=True)
    model.text.pooler = MeanPooler()  # a mean over the row would average other captions in
    with pytest.raises(ParamsError, match="cls_last_hidden_state_pooler.*MeanPooler"):
        check_packable(model.text)


def test_packing_is_a_param_that_excludes_length_groups():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())["pretrain"]
    cfg = TrainConfig.from_params(Section({**raw, "text_packing": True}, "pretrain"), train_samples=8)
    assert cfg.text_layout(256) == TextLayout(buckets=1, pack_width=256)
    assert TrainConfig.from_params(Section(raw, "pretrain"), train_samples=8).text_layout(256) == TextLayout()
    with pytest.raises(ParamsError, match="'pretrain.text_packing' or 'pretrain.text_buckets'"):
        TrainConfig.from_params(Section({**raw, "text_packing": True, "text_buckets": 4}, "pretrain"), train_samples=8)
