"""Benchmark: our training loader vs open_clip's ``get_wds_dataset`` on the same shards.

Same shards (real MedPix radiology pairs from ../shared/data when present, else the bundled
sample), same image transform, same tokenizer, same batch size and worker count; the baseline
pads every caption to the fixed context, ours pads to the longest in the batch. Prints one JSON
line: ratio = our samples/s over open_clip's (target ≥ 1.0), and the mean padded length.

    .venv/bin/python benchmarks/loader.py [--batches 40] [--workers 2] [--context 256]
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

from biomedclip_factory.corpus.records import Pair, make_pair_id  # noqa: E402
from biomedclip_factory.model.tokenizer import train_wordpiece  # noqa: E402
from biomedclip_factory.shards.loader import CaptionCollator, shard_urls, train_batches  # noqa: E402
from biomedclip_factory.shards.writer import write_split  # noqa: E402

MEDPIX = ROOT.parent / "shared" / "data" / "medpix"


def _pair(article: str, fig_id: str, image: str, caption: str) -> Pair:
    return Pair(pair_id=make_pair_id(article, fig_id), pmcid=article.split(".")[0], pmid=None, fig_id=fig_id,
                label=None, caption=caption, mentions=[], image=image, width=0, height=0, sha256="", phash="",
                license_code=None, split="train")


def corpus(work: Path) -> tuple[list[Pair], Path]:
    """Pairs in the align stage's shape, from MedPix or the sample's own figures."""
    if (MEDPIX / "pairs.jsonl").is_file():
        rows = [json.loads(line) for line in (MEDPIX / "pairs.jsonl").open()]
        return [_pair(f"MPX{i}.1", Path(r["image"]).stem, r["image"], r["caption"]) for i, r in enumerate(rows)], MEDPIX
    images = sorted((ROOT / "sample" / "pmc-mirror").glob("PMC*/*.jpg"))
    return [_pair(p.parent.name, p.stem.replace(".", "-"), str(p), p.stem) for p in images] * 20, Path("/")


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
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--context", type=int, default=256)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows, image_root = corpus(work)
        write_split(rows, image_root, work / "shards", "train", shard_size=128, seed=0)
        train_wordpiece([r.caption for r in rows], work / "tok", 8000, 2, True, args.context)
        hf_tok = AutoTokenizer.from_pretrained(work / "tok")
        preprocess = open_clip.image_transform(224, is_train=True)

        ours, our_len = timed(train_batches(work / "shards", preprocess, CaptionCollator(hf_tok, args.context),
                                            args.batch_size, seed=0, rank=0, num_workers=args.workers), args.batches)

        oc_tok = open_clip.tokenizer.HFTokenizer(str(work / "tok"), context_length=args.context)
        oc_args = SimpleNamespace(train_data="::".join(shard_urls(work / "shards", "train")), val_data=None,
                                  dataset_resampled=True, train_num_samples=len(rows), batch_size=args.batch_size,
                                  workers=args.workers, world_size=1, seed=0, train_data_upsampling_factors=None)
        info = get_wds_dataset(oc_args, preprocess, is_train=True, tokenizer=oc_tok)
        baseline, base_len = timed(iter(info.dataloader), args.batches)
    print(json.dumps({"benchmark": "loader", "ratio": round(ours / baseline, 3), "target": 1.0,
                      "baseline": "open_clip_train.data.get_wds_dataset (fixed padding)",
                      "ours_samples_per_s": round(ours, 1), "baseline_samples_per_s": round(baseline, 1),
                      "mean_padded_length": round(our_len, 1), "fixed_length": base_len,
                      "samples": len(rows), "workers": args.workers, "batch_size": args.batch_size}))


if __name__ == "__main__":
    main()
