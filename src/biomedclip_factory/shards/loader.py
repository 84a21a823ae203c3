"""Stream shards back as (image tensor, token ids, metadata) batches for training and evaluation.

Training is resampled (endless, seeded per rank and worker) so every rank always has data;
evaluation reads each sample exactly once, its shards split across ranks and workers. Captions are
padded to the longest in the batch, capped at the context length, so short captions do not pay for
the full context. A corrupted sample is skipped and counted, never a crash. Shard locations may be
local paths or anything webdataset opens (``http(s)://``, ``pipe:…`` for object stores).
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import webdataset as wds
from webdataset.gopen import gopen

from ..errors import DataError

Batch = tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]
log = logging.getLogger(__name__)


def _join(base: str | Path, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *parts])


def read_sizes(shard_base: str | Path, split: str) -> dict[str, int]:
    """The split's ``sizes.json`` (open_clip's convention), local or remote."""
    url = _join(shard_base, split, "sizes.json")
    try:
        with gopen(url, "rb") as fh:
            return json.loads(fh.read())
    except (OSError, ValueError) as exc:
        raise DataError(f"no shards for split '{split}': cannot read {url} ({exc})") from exc


def shard_urls(shard_base: str | Path, split: str) -> list[str]:
    return [_join(shard_base, split, name) for name, n in sorted(read_sizes(shard_base, split).items()) if n > 0]


def split_size(shard_base: str | Path, split: str) -> int:
    return sum(read_sizes(shard_base, split).values())


class SkipCounter:
    """A webdataset handler that skips a bad sample or shard, counts it and logs the first few."""

    def __init__(self, log_first: int = 10) -> None:
        self.skipped = 0
        self.log_first = log_first

    def __call__(self, exc: Exception) -> bool:
        self.skipped += 1
        if self.skipped <= self.log_first:
            log.warning("skipped a corrupted sample: %r", exc)
        return True


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


def _samples_to_batches(preprocess: Callable, collate: CaptionCollator, batch_size: int, partial: bool,
                        skips: SkipCounter) -> list:
    return [wds.decode("pilrgb", handler=skips),
            wds.to_tuple("jpg", "txt", "json", handler=skips),
            wds.map_tuple(preprocess, lambda t: t, lambda j: j, handler=skips),
            wds.batched(batch_size, collation_fn=collate, partial=partial)]


def _worker_id() -> int:
    info = torch.utils.data.get_worker_info()
    return info.id if info is not None else 0


def _loader(pipeline: wds.DataPipeline, num_workers: int, prefetch_factor: int) -> Iterator[Batch]:
    if num_workers == 0:
        return iter(pipeline)
    return iter(wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers, prefetch_factor=prefetch_factor,
                              persistent_workers=True))


def train_batches(shard_base: str | Path, preprocess: Callable, collate: CaptionCollator, batch_size: int, seed: int,
                  rank: int, num_workers: int = 0, prefetch_factor: int = 2, shuffle_buffer: int = 1000,
                  skips: SkipCounter | None = None) -> Iterator[Batch]:
    """An endless stream of training batches for ``rank``, the same for the same seed."""
    urls = shard_urls(shard_base, "train")
    if not urls:
        raise DataError(f"the train split in {shard_base} has no samples")
    skips = skips or SkipCounter()

    def worker_seed() -> int:  # deterministic per (seed, rank, worker): same stream on a rerun
        return int.from_bytes(hashlib.sha256(f"{seed}:{rank}:{_worker_id()}".encode()).digest()[:4], "big")

    pipeline = wds.DataPipeline(
        wds.ResampledShards(urls, worker_seed=worker_seed, deterministic=True),
        wds.tarfile_to_samples(handler=skips),
        wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), rng=random.Random(f"{seed}:{rank}")),
        *_samples_to_batches(preprocess, collate, batch_size, partial=False, skips=skips),
    )
    return _loader(pipeline, num_workers, prefetch_factor)


def eval_batches(shard_base: str | Path, split: str, preprocess: Callable, collate: CaptionCollator, batch_size: int,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0, prefetch_factor: int = 2,
                 skips: SkipCounter | None = None) -> Iterator[Batch]:
    """Every sample of ``split`` exactly once across ``world_size`` ranks (shards split by rank, worker)."""
    urls = shard_urls(shard_base, split)[rank::world_size]
    if not urls:
        return iter(())
    skips = skips or SkipCounter()
    pipeline = wds.DataPipeline(wds.SimpleShardList(urls), wds.split_by_worker,
                                wds.tarfile_to_samples(handler=skips),
                                *_samples_to_batches(preprocess, collate, batch_size, partial=True, skips=skips))
    return _loader(pipeline, num_workers, prefetch_factor)
