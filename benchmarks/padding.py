"""How much of the text tower's work is padding: padded tokens / real tokens per training micro-batch.

Real PMC figure captions (ROCO's ~22k, ``../shared/data/text/roco_captions``) are tokenised with a
real scientific WordPiece vocabulary (SciBERT's, ``../shared/data/text/scibert_vocab``: the paper
profile's BiomedBERT is not on this machine; both are uncased biomedical WordPiece vocabularies)
at context 256, then drawn into seeded random micro-batches of ``--batch`` captions. For each batch:

- baseline: padded to the batch's longest caption (``CaptionCollator`` without sorting);
- ours: sorted by length and cut into ``--buckets`` groups (``length_buckets``), each padded to its
  own longest, rounded up to a multiple of 8;
- packed: end to end in rows of the context (``pretrain.text_packing``, ``first_fit_rows``), one pass
  of the text tower where the groups take one each.

ROCO's captions are short radiology captions; PMC-15M's run longer (the paper: median ~?), so the
script also reports batches of ROCO captions concatenated in twos and threes, a longer-tailed mix
that puts a near-256-token caption in most batches of 512, as PMC-15M does.

The headline ratio and target are packing's (one pass); ``buckets_meet_target`` says whether the groups do.

    .venv/bin/python benchmarks/padding.py [--batch 512] [--buckets 8]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import BertTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from biomedclip_factory.model.text import clean_text  # noqa: E402
from biomedclip_factory.shards.loader import length_buckets  # noqa: E402
from biomedclip_factory.train.packing import first_fit_rows  # noqa: E402

TEXT = ROOT.parent / "shared" / "data" / "text"
TARGET = 1.2


def roco_captions(root: Path) -> list[str]:
    captions = []
    for path in sorted(root.glob("*/*/captions.txt")):
        for line in path.read_text(encoding="utf-8").splitlines():
            _, _, caption = line.partition("\t")
            if caption.strip():
                captions.append(caption.strip())
    return captions


def ratios(lengths: list[int], batch: int, buckets: int, multiple: int, batches: int, seed: int,
           context: int) -> tuple[float, float, float]:
    """Padded/real over ``batches``: padding to each batch's longest, with sorted length buckets, packed."""
    rng = random.Random(seed)
    real = whole = bucketed = packed = 0
    for _ in range(batches):
        drawn = sorted(rng.sample(lengths, batch))
        width = drawn[-1]
        tokens = torch.zeros(batch, width, dtype=torch.long)
        for row, n in enumerate(drawn):
            tokens[row, :n] = 1
        real += sum(drawn)
        whole += batch * width
        bucketed += sum(group.numel() for group in length_buckets(tokens, 0, buckets, multiple))
        packed += (int(first_fit_rows(np.array(drawn), context)[0].max()) + 1) * context
    return whole / real, bucketed / real, packed / real


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--buckets", type=int, default=8)
    ap.add_argument("--multiple", type=int, default=8, help="bucket widths rounded up to this")
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--lengths-out", type=Path, default=None,
                    help="write the joined set's token counts here (JSON), for benchmarks/train.py --caption-lengths")
    args = ap.parse_args()
    if not (TEXT / "roco_captions").is_dir():
        sys.exit(f"padding: {TEXT / 'roco_captions'} is missing (this benchmark reads ../shared/data)")
    captions = roco_captions(TEXT / "roco_captions")
    tokenizer = BertTokenizerFast(vocab_file=str(TEXT / "scibert_vocab" / "vocab.txt"), do_lower_case=True)
    rng = random.Random(0)
    longer = [" ".join(rng.sample(captions, rng.choice((2, 3)))) for _ in range(len(captions))]
    report = {}
    for name, texts in (("roco", captions), ("roco_joined", longer)):
        cleaned = [clean_text(t) for t in texts]  # as training tokenises them
        lengths = [len(ids) for ids in tokenizer(cleaned, truncation=True, max_length=args.context)["input_ids"]]
        baseline, ours, packed = ratios(lengths, args.batch, args.buckets, args.multiple, args.batches, seed=1,
                                        context=args.context)
        if name == "roco_joined" and args.lengths_out:
            args.lengths_out.write_text(json.dumps(lengths))
        report[name] = {"captions": len(texts), "median_tokens": sorted(lengths)[len(lengths) // 2],
                        "at_context": sum(n >= args.context for n in lengths) / len(lengths),
                        "padded_per_real": {"baseline": round(baseline, 2), "ours": round(ours, 2),
                                            "packed": round(packed, 3)}}
    worst = {layout: max(r["padded_per_real"][layout] for r in report.values()) for layout in ("ours", "packed")}
    print(json.dumps({"benchmark": "padding", "baseline": "padding to each micro-batch's longest caption",
                      "ratio": round(min(r["padded_per_real"]["baseline"] / r["padded_per_real"]["packed"]
                                         for r in report.values()), 2),
                      "target": TARGET, "worst_padded_per_real": worst, "meets_target": worst["packed"] <= TARGET,
                      "buckets_meet_target": worst["ours"] <= TARGET,
                      "batch": args.batch, "buckets": args.buckets, "multiple": args.multiple, "context": args.context, "sets": report}))


if __name__ == "__main__":
    main()
