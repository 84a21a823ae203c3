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
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import webdataset as wds
from webdataset.gopen import gopen

from ..errors import DataError
from ..model.text import tokenize
from .layout import CAPTION, IMAGE, MANIFEST, META, SIZES, ShardLayoutError, kept_meta
from .transform import draft_jpeg_decoder

Batch = tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]
log = logging.getLogger(__name__)


def _join(base: str | Path, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *parts])


def read_sizes(shard_base: str | Path, split: str) -> dict[str, int]:
    """The split's ``sizes.json`` (open_clip's convention), local or remote."""
    url = _join(shard_base, split, SIZES)
    try:
        with gopen(url, "rb") as fh:
            return json.loads(fh.read())
    except (OSError, ValueError) as exc:
        raise DataError(f"no shards for split '{split}': cannot read {url} ({exc})") from exc


def shard_urls(shard_base: str | Path, split: str) -> list[str]:
    return [_join(shard_base, split, name) for name, n in sorted(read_sizes(shard_base, split).items()) if n > 0]


def split_size(shard_base: str | Path, split: str) -> int:
    return sum(read_sizes(shard_base, split).values())


def split_digests(shard_dir: Path) -> dict[str, str]:
    """Each split's content digest from the shard stage's ``manifest.json`` ({} for shards without one):
    what pretraining resumes on and what the promotion gate calls the same gallery."""
    manifest = shard_dir / MANIFEST
    if not manifest.is_file():
        return {}
    return {split: info["sha256"] for split, info in json.loads(manifest.read_text()).items() if "sha256" in info}


class SkipCounter:
    """A webdataset handler that skips a bad sample or shard, counts it and logs the first few."""

    def __init__(self, log_first: int = 10) -> None:
        self.skipped = 0
        self.log_first = log_first

    def __call__(self, exc: Exception) -> bool:
        if isinstance(exc, ShardLayoutError):  # every sample would fail alike
            raise exc
        self.skipped += 1
        if self.skipped <= self.log_first:
            log.warning("skipped a corrupted sample: %s", exc)
        return True


class BatchMeta(list):
    """A batch's per-sample metadata, and how many samples its reader (a loader worker, or this process)
    had skipped when it made the batch: a worker's own count never reaches the trainer otherwise."""

    def __init__(self, rows: Iterable[dict[str, Any]] = (), skipped: int = 0, reader: int = 0) -> None:
        super().__init__(rows)
        self.skipped, self.reader = skipped, reader


class SkipTally:
    """Samples a training run skipped, over every reader of every stream it opened: the last count each
    reader stamped on its batches (``BatchMeta``), summed."""

    def __init__(self) -> None:
        self.closed, self.latest = 0, {}

    def read(self, batches: Iterator[Batch]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``batches`` without their metadata, counted as they pass."""
        for images, texts, meta in batches:
            if isinstance(meta, BatchMeta):
                self.latest[meta.reader] = meta.skipped
            yield images, texts

    def next_stream(self) -> None:
        """The stream read so far is done with (a new one counts from 0 in new readers)."""
        self.closed, self.latest = self.total, {}

    @property
    def total(self) -> int:
        return self.closed + sum(self.latest.values())


class GiveUpOnDeadStream:
    """The skip handler of an endless stream: skips and counts as ``skips`` does, but once ``limit`` failures
    come in a row with no sample read between them, raises. When no shard can be read (a partial
    ``dvc pull``, a shard server that is down) resampling would retry forever, yielding nothing, with
    the run's GPUs and its pipeline's lock held."""

    def __init__(self, skips: SkipCounter, limit: int, shards: int) -> None:
        self.skips, self.limit, self.shards, self.in_a_row = skips, limit, shards, 0

    def __call__(self, exc: Exception) -> bool:
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise DataError(f"training read nothing from its {self.shards} shards: the last {self.limit} samples or "
                            f"shards drawn all failed, the last with: {exc}") from exc
        return self.skips(exc)

    def read(self, sample: Any) -> Any:
        self.in_a_row = 0
        return sample


class CaptionCollator:
    """Stack images; tokenise captions with padding to the batch's longest (≤ context length).

    With ``sort_by_length`` the batch comes out ordered by caption length (images, captions and
    metadata alike: the contrastive loss does not depend on the order of its rows), ready to be cut
    into ``length_buckets`` that each pay only for their own longest caption.
    """

    def __init__(self, tokenizer: Any, context_length: int, sort_by_length: bool = False) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.sort_by_length = sort_by_length

    def __call__(self, samples: list[tuple[torch.Tensor, str, dict[str, Any]]]) -> Batch:
        encoded = tokenize(self.tokenizer, [s[1] for s in samples], self.context_length)
        tokens = encoded["input_ids"]
        if self.sort_by_length:
            order = torch.argsort(encoded["attention_mask"].sum(1), stable=True)
            samples, tokens = [samples[i] for i in order.tolist()], tokens[order]
        return torch.stack([s[0] for s in samples]), tokens, [s[2] for s in samples]


def length_buckets(tokens: torch.Tensor, pad_token_id: int, buckets: int, multiple: int = 8) -> list[torch.Tensor]:
    """``tokens``' rows (sorted by length) in at most ``buckets`` consecutive groups, each cut to its own
    longest caption rounded up to ``multiple`` (few distinct shapes for a compiled tower,
    tensor-core-friendly widths), the cuts chosen to leave the least padding.

    Padding a batch of 512 real figure captions to its longest computes mostly padding (ROCO's: 7.5
    padded tokens per real one); 8 groups cut this way bring it near the real count.
    """
    return [tokens[start:stop, :width] for start, stop, width in bucket_cuts(tokens, pad_token_id, buckets, multiple)]


def bucket_cuts(tokens: torch.Tensor, pad_token_id: int, buckets: int, multiple: int = 8) -> list[tuple[int, int, int]]:
    """``length_buckets``' groups as (first row, end row, width), read from host ``tokens``: the trainer
    cuts them from one device copy of the batch (a copy per group would copy non-contiguous slices
    through pageable memory, making the host wait)."""
    lengths = (tokens != pad_token_id).sum(1).numpy()
    widths = np.minimum(tokens.shape[1], np.maximum(1, -(-lengths // multiple) * multiple))
    return [(start, stop, int(widths[start:stop].max())) for start, stop in _least_padding_cuts(widths, max(1, buckets))]


def _least_padding_cuts(widths: np.ndarray, buckets: int) -> list[tuple[int, int]]:
    """The contiguous row ranges, at most ``buckets``, minimising Σ rows × widest row (exact for sorted
    ``widths``): a dynamic programme over cut points. Only the ends of runs of equal width are tried:
    for sorted rows, moving a cut to the end of its run never adds cost, and widths are multiples of
    8 up to the context, so there are ~33 points whatever the batch (every row as a point grew as
    rows² in time and memory: 0.3 s and ~1 GB at 2,048 rows, on the training thread)."""
    n = len(widths)
    points = np.concatenate([[0], np.flatnonzero(np.diff(widths)) + 1, [n]]) if n else np.array([0])
    peak = np.concatenate([[0.0], np.maximum.accumulate(widths).astype(np.float64)])[points]  # widest row < point
    start, stop = np.arange(len(points))[:, None], np.arange(len(points))[None, :]
    span = np.where(start <= stop, (points[None, :] - points[:, None]) * peak[None, :], np.inf)
    best, choices = np.where(np.arange(len(points)) == 0, 0.0, np.inf), []
    for _ in range(buckets):  # best[j]: least cost of rows < points[j] in the groups so far (empty ones allowed)
        total = best[:, None] + span
        choices.append(total.argmin(axis=0))
        best = total.min(axis=0)
    cuts, stop_point = [], len(points) - 1
    for choice in reversed(choices):
        start_point = int(choice[stop_point])
        if start_point < stop_point:
            cuts.append((int(points[start_point]), int(points[stop_point])))
        stop_point = start_point
    return cuts[::-1]


def _samples_to_batches(preprocess: Callable, collate: CaptionCollator, batch_size: int, partial: bool,
                        skips: Callable[[Exception], bool], meta_fields: tuple[str, ...], draft_size: int | None = None,
                        read: Callable[[Any], Any] = lambda sample: sample) -> list:
    """Decoded, transformed, batched (``read`` sees each sample that made it); of each sample's ``.json``
    (~2 kB: mentions, hashes) only ``meta_fields`` travel on, through the worker queues and, in
    evaluation, for the whole split."""
    decoders = ([draft_jpeg_decoder(draft_size)] if draft_size else []) + [wds.autodecode.imagehandler("pilrgb")]
    return [wds.map(_named_failures(wds.autodecode.Decoder(decoders)), handler=skips),
            wds.to_tuple(IMAGE, CAPTION, META, handler=skips),
            wds.map_tuple(preprocess, lambda t: t, lambda j: kept_meta(j, meta_fields), handler=skips),
            wds.map(read),
            wds.batched(batch_size, collation_fn=collate, partial=partial)]


def _named_failures(decode: Callable[[dict], dict]) -> Callable[[dict], dict]:
    """``decode`` whose failure names the shard and the sample (webdataset's own error names neither: a
    corrupt JPEG is "cannot identify image file <_io.BytesIO …>")."""
    def decoded(sample: dict) -> dict:
        try:
            return decode(sample)
        except Exception as exc:  # noqa: BLE001 - any decoder's error, handed to the skip handler
            raise DataError(f"{sample.get('__url__')}: sample {sample.get('__key__')}: cannot decode "
                            f"({type(exc).__name__}: {exc})") from exc
    return decoded


def _worker_id() -> int:
    info = torch.utils.data.get_worker_info()
    return info.id if info is not None else 0


def _loader(pipeline: wds.DataPipeline, num_workers: int, prefetch_factor: int, pin: bool = False) -> Iterator[Batch]:
    """Batches from ``num_workers`` processes (or this one); with ``pin``, in page-locked memory, so the trainer's
    non-blocking copies to the GPU never make the host wait (from pageable memory they are staged and can)."""
    if num_workers == 0:
        return (_pinned(batch) for batch in pipeline) if pin else iter(pipeline)
    return iter(wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers, prefetch_factor=prefetch_factor,
                              persistent_workers=True, pin_memory=pin))


def _pinned(batch: Batch) -> Batch:
    return tuple(part.pin_memory() if isinstance(part, torch.Tensor) else part for part in batch)


TRAIN_META = ("pair_id",)  # what training keeps of a sample's metadata (a skipped sample's name)


# open_clip_train's sample shuffle (data.py's _SAMPLE_SHUFFLE_SIZE and _INITIAL): samples still encoded,
# ~5,000 × ~35 kB (a 512-px figure and its JSON) per loader worker, the first batch once 1,000 are in.
SAMPLE_SHUFFLE_SIZE = 5000
SAMPLE_SHUFFLE_INITIAL = 1000
# Failures in a row, no sample read between them, after which training gives up on its shards: a shard of
# ~1,000 corrupt samples, or ~1,000 draws of missing shards (with 5% of shards readable, 1 in 10^22).
DEAD_STREAM_FAILURES = 1000


def train_batches(shard_base: str | Path, preprocess: Callable, collate: CaptionCollator, batch_size: int, seed: int,
                  rank: int, num_workers: int = 0, prefetch_factor: int = 2,
                  shuffle_buffer: int = SAMPLE_SHUFFLE_SIZE, skips: SkipCounter | None = None,
                  draft_size: int | None = None) -> Iterator[Batch]:
    """An endless stream of training batches for ``rank``, the same for the same seed. With ``draft_size``
    (the model's input side) JPEGs decode in draft mode as small as a crop at that size allows."""
    urls = shard_urls(shard_base, "train")
    if not urls:
        raise DataError(f"the train split in {shard_base} has no samples")
    missing = [url for url in urls if "://" not in url and not url.startswith("pipe:") and not Path(url).is_file()]
    if missing:  # resampling would train on the rest, silently: a partial `dvc pull`
        raise DataError(f"{len(missing)} of the {len(urls)} train shards that sizes.json lists are missing, "
                        f"e.g. {missing[0]} (dvc pull data/shards, or run the shard stage)")
    guard = GiveUpOnDeadStream(skips or SkipCounter(), DEAD_STREAM_FAILURES, len(urls))

    def worker_seed(purpose: str = "shards") -> int:  # deterministic per (seed, rank, worker): same stream on a rerun
        key = f"{seed}:{rank}:{_worker_id()}" + ("" if purpose == "shards" else f":{purpose}")
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")

    def shuffle(samples: Iterator[dict]) -> Iterator[dict]:
        """open_clip_train's sample buffer, its draws seeded in the worker that runs it: an RNG made here
        would reach every worker as the same copy, and they would all draw alike."""
        return wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, SAMPLE_SHUFFLE_INITIAL),
                           rng=random.Random(worker_seed("shuffle")))(samples)

    def stamped(batch: Batch) -> Batch:  # with the count of this reader (a worker's copy of ``guard``)
        return batch[0], batch[1], BatchMeta(batch[2], guard.skips.skipped, _worker_id())

    pipeline = wds.DataPipeline(
        wds.ResampledShards(urls, worker_seed=worker_seed, deterministic=True),
        wds.tarfile_to_samples(handler=guard),
        shuffle,
        *_samples_to_batches(preprocess, collate, batch_size, partial=False, skips=guard, meta_fields=TRAIN_META,
                             draft_size=draft_size, read=guard.read),
        wds.map(stamped),
    )
    return _loader(pipeline, num_workers, prefetch_factor, pin=torch.cuda.is_available())


EVAL_META = ("pair_id", "caption")  # what evaluation reads of a sample's metadata (its examples plot)


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
                                *_samples_to_batches(preprocess, collate, batch_size, partial=True, skips=skips,
                                                     meta_fields=EVAL_META))
    return _loader(pipeline, num_workers, prefetch_factor)
