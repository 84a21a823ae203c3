"""Benchmark: samples/s per loader worker, ours vs open_clip's ``get_wds_dataset``, on the same shards.

The shards hold what the paper profile's align writes: real PMC figures (the bundled sample's, or
MedPix's radiology images with ``--source medpix``) normalised to ``max_side`` 512 at JPEG quality 90,
repeated to ``--samples``. Both loaders decode, augment (the paper's RandomResizedCrop at 224) and
tokenise the same shards with the same tokenizer, batch size and worker count. Ours: JPEG draft
decoding, uint8 pixels out of the workers (normalised on the device), captions sorted by length and
padded to the batch's longest; open_clip's: full decode, float32 normalised in the workers, captions
padded to the context. Per worker is samples/s over workers (the main process only receives).
The final JSON line: ratio = ours / open_clip per worker (target ≥ 2), ours per worker (target ≥ 200).

    .venv/bin/python benchmarks/loader.py [--workers 1] [--batches 40] [--source sample|medpix]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import open_clip
from open_clip_train.data import get_wds_dataset
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from biomedclip_factory.corpus.images import normalise_image  # noqa: E402
from biomedclip_factory.corpus.records import Pair, image_path, make_pair_id  # noqa: E402
from biomedclip_factory.model.tokenizer import train_wordpiece  # noqa: E402
from biomedclip_factory.shards.loader import CaptionCollator, shard_urls, train_batches  # noqa: E402
from biomedclip_factory.shards.transform import train_image_transform  # noqa: E402
from biomedclip_factory.shards.writer import write_split  # noqa: E402

MEDPIX = ROOT.parent / "shared" / "data" / "medpix"
MAX_SIDE, JPEG_QUALITY, SIZE = 512, 90, 224  # params/biomedclip.yaml's align and model


def _pair(article: str, fig_id: str, caption: str) -> Pair:
    pair_id = make_pair_id(article, fig_id)
    return Pair(pair_id=pair_id, pmcid=article.split(".")[0], pmid=None, fig_id=fig_id, label=None, caption=caption,
                mentions=[], image=image_path(pair_id), width=0, height=0, sha256="", phash="", license_code=None,
                split="train")


def corpus(work: Path, source: str, samples: int) -> list[Pair]:
    """``samples`` pairs whose images are real figures normalised as the paper profile's align does."""
    if source == "medpix":
        rows = [json.loads(line) for line in (MEDPIX / "pairs.jsonl").open()]
        found = [(MEDPIX / r["image"], r["caption"]) for r in rows]
    else:
        found = [(p, p.stem) for p in sorted((ROOT / "sample" / "pmc-mirror").glob("PMC*/*.jpg"))]
    pairs = []
    for i in range(samples):
        path, caption = found[i % len(found)]
        pair = _pair(f"BENCH{i}.1", "F1", caption)
        jpeg = normalise_image(path.read_bytes(), MAX_SIDE, JPEG_QUALITY, str(path)).jpeg
        (work / pair.image).parent.mkdir(parents=True, exist_ok=True)
        (work / pair.image).write_bytes(jpeg)
        pairs.append(pair)
    return pairs


def timed(batches, n: int) -> tuple[float, float]:
    next(batches)  # start-up (workers, first shard) is not throughput
    t0, samples, tokens = time.perf_counter(), 0, 0
    for _ in range(n):
        images, text = next(batches)[:2]
        samples += images.shape[0]
        tokens += text.shape[1]
    return samples / (time.perf_counter() - t0), tokens / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--source", choices=("sample", "medpix"), default="sample")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = corpus(work, args.source, args.samples)
        write_split(rows, work, work / "shards", "train", shard_size=128, seed=0)
        train_wordpiece([r.caption for r in rows], work / "tok", 8000, 2, True, args.context)
        hf_tok = AutoTokenizer.from_pretrained(work / "tok")
        collate = CaptionCollator(hf_tok, args.context, sort_by_length=True)
        ours, our_len = timed(train_batches(work / "shards", train_image_transform(SIZE), collate, args.batch_size,
                                            seed=0, rank=0, num_workers=args.workers, draft_size=SIZE), args.batches)

        oc_tok = open_clip.tokenizer.HFTokenizer(str(work / "tok"), context_length=args.context)
        oc_args = SimpleNamespace(train_data="::".join(shard_urls(work / "shards", "train")), val_data=None,
                                  dataset_resampled=True, train_num_samples=args.batch_size * (args.batches + 2),
                                  batch_size=args.batch_size,
                                  workers=args.workers, world_size=1, seed=0, train_data_upsampling_factors=None)
        info = get_wds_dataset(oc_args, open_clip.image_transform(SIZE, is_train=True), is_train=True, tokenizer=oc_tok)
        baseline, base_len = timed(iter(info.dataloader), args.batches)
    per_worker = ours / max(1, args.workers)
    print(json.dumps({"benchmark": "loader", "baseline": "open_clip_train.data.get_wds_dataset, same shards",
                      "ratio": round(ours / baseline, 2), "target": 2.0,
                      "ours_per_worker": round(per_worker, 1), "per_worker_target": 200,
                      "baseline_per_worker": round(baseline / max(1, args.workers), 1),
                      "mean_padded_length": round(our_len, 1), "baseline_length": base_len,
                      "source": args.source, "max_side": MAX_SIDE, "image_size": SIZE, "samples": len(rows),
                      "workers": args.workers, "batch_size": args.batch_size}))


if __name__ == "__main__":
    main()
