"""Stream shards back as (image tensor, token ids) batches for training and evaluation.

Training is resampled (infinite, seeded per rank) so every rank always has data; evaluation reads
each sample exactly once in shard order. Captions are padded to the longest in the batch, capped
at the context length, so short captions do not pay for the full context.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import webdataset as wds

from ..errors import DataError

Batch = tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]


def shard_urls(shard_dir: Path, split: str) -> list[str]:
    """The split's shard paths, from its sizes.json (open_clip's convention)."""
    sizes_file = shard_dir / split / "sizes.json"
    if not sizes_file.is_file():
        raise DataError(f"no shards for split '{split}': {sizes_file} is missing (run the shard stage)")
    sizes = json.loads(sizes_file.read_text())
    return [str(shard_dir / split / name) for name, n in sorted(sizes.items()) if n > 0]


def split_size(shard_dir: Path, split: str) -> int:
    return sum(json.loads((shard_dir / split / "sizes.json").read_text()).values())


class CaptionCollator:
    """Stack images; tokenise captions with padding to the batch's longest (≤ context length)."""

    def __init__(self, tokenizer: Any, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, samples: list[tuple[torch.Tensor, str, dict[str, Any]]]) -> Batch:
        images = torch.stack([s[0] for s in samples])
        tokens = self.tokenizer([s[1] for s in samples], padding="longest", truncation=True,
                                max_length=self.context_length, return_tensors="pt")["input_ids"]
        return images, tokens, [s[2] for s in samples]


def _decode_and_batch(preprocess: Callable, collate: CaptionCollator, batch_size: int, partial: bool) -> list:
    return [wds.decode("pil", handler=wds.warn_and_continue),
            wds.to_tuple("jpg", "txt", "json", handler=wds.warn_and_continue),
            wds.map_tuple(preprocess, lambda t: t, lambda j: j),
            wds.batched(batch_size, collation_fn=collate, partial=partial)]


def _worker_id() -> int:
    info = torch.utils.data.get_worker_info()
    return info.id if info is not None else 0


def train_batches(shard_dir: Path, preprocess: Callable, collate: CaptionCollator, batch_size: int,
                  seed: int, rank: int, num_workers: int = 0, shuffle_buffer: int = 1000) -> Iterator[Batch]:
    """An endless stream of training batches for ``rank``, the same for the same seed."""
    urls = shard_urls(shard_dir, "train")
    if not urls:
        raise DataError(f"the train split in {shard_dir} has no samples")
    shards = wds.ResampledShards(urls, seed=seed, deterministic=True,
                                 worker_seed=lambda: rank * 1024 + _worker_id())
    pipeline = wds.DataPipeline(
        shards,
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.shuffle(shuffle_buffer, rng=random.Random(f"{seed}:{rank}")),
        *_decode_and_batch(preprocess, collate, batch_size, partial=False),
    )
    return iter(wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers))


def eval_batches(shard_dir: Path, split: str, preprocess: Callable, collate: CaptionCollator,
                 batch_size: int) -> Iterator[Batch]:
    """Every sample of ``split`` exactly once, in shard order."""
    urls = shard_urls(shard_dir, split)
    if not urls:
        return iter(())
    pipeline = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(handler=wds.warn_and_continue),
                                *_decode_and_batch(preprocess, collate, batch_size, partial=True))
    return iter(pipeline)

