"""Captions packed end to end into rows of the context length: the text tower computes ~1% pad tokens.

Length groups (``pretrain.text_buckets``) still pad each group to its own longest caption, and on a
GPU every group is a separate pass of BERT's small kernels (~12 ms each on an H200 at the paper
profile, README "The GPU check"). Packing runs the whole micro-batch as one pass over rows that are
nearly all real tokens: each caption keeps its own positions (0, 1, …) and attends only to itself
(a block-diagonal mask), so its features are the padded forward's up to rounding. BERT's CLS
feature of every caption is then gathered back into the batch's order. The price: attention runs over
whole rows, the masked pairs computed and discarded (~3× the useful attention FLOPs on real captions,
~5% of the text tower's), and a dense mask rules out SDPA's flash kernel.

The layout is computed on the host from the host tokens (first-fit decreasing) and copied to the
device as one buffer, so a step never waits for the GPU to learn where its captions went.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from open_clip.hf_model import ClsLastHiddenStatePooler

from ..errors import ParamsError


class PackedCaptions(NamedTuple):
    """A micro-batch's captions in rows: ``input_ids`` and ``position_ids`` [rows, width] (padding has
    position 0, which makes every pad token a one-token segment of its own), and ``cls_index`` [captions],
    each caption's first token as a flat index into the rows, in the batch's order. A named tuple, so that
    ZeRO-3's input hooks walk into it as they walk into any tuple."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    cls_index: torch.Tensor

    @property
    def segments(self) -> torch.Tensor:
        """Which caption of its row each token belongs to: a new one starts at every position 0."""
        return (self.position_ids == 0).cumsum(1)


def first_fit_rows(lengths: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, offset) of every caption, longest first into the first row with room (first-fit decreasing:
    at most 11/9 of the fewest rows possible plus one, ~1 ms for 512 captions); deterministic for equal lengths."""
    if lengths.size and (lengths.max() > width or lengths.min() < 1):
        raise ValueError(f"caption lengths must lie in [1, {width}], got {lengths.min()}..{lengths.max()}")
    rows, offsets = np.empty(len(lengths), np.int64), np.empty(len(lengths), np.int64)
    room = np.full(len(lengths) + 1, width)
    used = 0
    for i in np.argsort(-lengths, kind="stable"):
        row = int(np.argmax(room[:used + 1] >= lengths[i]))  # row ``used`` is still empty: always fits
        used += row == used
        rows[i], offsets[i] = row, width - room[row]
        room[row] -= lengths[i]
    return rows, offsets


def pack_captions(tokens: torch.Tensor, pad_token_id: int, width: int, device: torch.device,
                  pin: bool = False) -> PackedCaptions:
    """Pack host ``tokens`` (one caption per row, starting at column 0) into rows of ``width`` on ``device``.

    Each caption's non-pad tokens go over at the positions they had: a pad id inside a caption (a literal
    "[PAD]" in its text) is masked out of the padded forward as well, and keeps its position slot there too.
    Everything goes over in one copy (pinned with ``pin``, so a non-blocking copy never waits for the GPU).
    """
    if len(tokens) and bool((tokens[:, 0] == pad_token_id).any()):
        raise ValueError("packing: every caption must start at column 0 (a right-padded batch), "
                         f"but row {int((tokens[:, 0] == pad_token_id).nonzero()[0])} starts with padding")
    caption, column = (tokens != pad_token_id).nonzero(as_tuple=True)  # row-major: caption by caption
    lengths = np.bincount(caption.numpy(), minlength=len(tokens))
    rows, offsets = first_fit_rows(lengths, width)
    n_rows = int(rows.max()) + 1 if len(rows) else 0
    rank = np.arange(len(caption)) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # k-th real token of its caption
    where = torch.from_numpy(np.repeat(rows * width + offsets, lengths) + rank)
    host = torch.empty(2 * n_rows * width + len(tokens), dtype=torch.long, pin_memory=pin)
    ids, positions = host[:n_rows * width].fill_(pad_token_id), host[n_rows * width:2 * n_rows * width].zero_()
    ids[where] = tokens[caption, column]
    positions[where] = column
    host[2 * n_rows * width:] = torch.from_numpy(rows * width + offsets)
    flat = host.to(device, non_blocking=True)
    return PackedCaptions(input_ids=flat[:n_rows * width].view(n_rows, width),
                          position_ids=flat[n_rows * width:2 * n_rows * width].view(n_rows, width),
                          cls_index=flat[2 * n_rows * width:])


def check_packable(text: torch.nn.Module) -> None:
    """Packing needs what it reproduces: a CLS-pooled HF tower whose attention takes a boolean 4-D mask."""
    pooler = getattr(text, "pooler", None)
    if not isinstance(pooler, ClsLastHiddenStatePooler) or getattr(text, "output_tokens", False):
        raise ParamsError("params: 'pretrain.text_packing' needs a text tower pooled by open_clip's "
                          f"cls_last_hidden_state_pooler (BiomedCLIP's), not {type(pooler).__name__}")
    implementation = text.transformer.config._attn_implementation
    if implementation != "sdpa":
        raise ParamsError("params: 'pretrain.text_packing' needs the text tower's attention to be 'sdpa' (it takes "
                          f"the block-diagonal mask as is), not {implementation!r}")


def packed_text_features(text: torch.nn.Module, packed: PackedCaptions) -> torch.Tensor:
    """open_clip's ``HFTextEncoder.forward`` (CLS pooler, projection) over packed rows, in the batch's order."""
    segments = packed.segments
    mask = segments[:, None, :, None] == segments[:, None, None, :]  # [rows, 1, width, width], True: attend
    out = text.transformer(input_ids=packed.input_ids, attention_mask=mask, position_ids=packed.position_ids)
    return text.proj(out.last_hidden_state.flatten(0, 1)[packed.cls_index])
