"""Benchmark: our deterministic WordPiece trainer vs ``tokenizers``' BertWordPieceTokenizer trainer.

Same captions, vocab size and min frequency, in one run: captions/s ratio (ours / HF), the share
of HF's vocabulary ours also learns, tokens per caption with each vocabulary, and whether each
trainer gives the same vocabulary in two fresh processes (HF's does not: hash-map order).

Captions: ROCO's in ``../shared/data/text/roco_captions`` when present, else the figure captions
of the repo's sample mirror.

    .venv/bin/python benchmarks/tokenizer.py [--repeat 10] [--vocab-size 30522] [--min-frequency 2]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from tokenizers import BertWordPieceTokenizer
from transformers import BertTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from biomedclip_factory.errors import ArticleError  # noqa: E402
from biomedclip_factory.model.tokenizer import SPECIAL_TOKENS  # noqa: E402
from biomedclip_factory.model.wordpiece import count_words, learn_vocab  # noqa: E402
from biomedclip_factory.pmc.jats import parse_article  # noqa: E402

ROCO = ROOT.parent / "shared" / "data" / "text" / "roco_captions"


def captions() -> list[str]:
    files = sorted(ROCO.glob("*/*/captions.txt"))
    if files:  # lines are "<id>\t<caption>"
        return [line.split("\t", 1)[-1].strip() for f in files for line in f.read_text().splitlines()]
    out = []
    for xml in sorted((ROOT / "sample" / "pmc-mirror").rglob("*.xml")):
        try:
            out += [f.caption for f in parse_article(xml.read_bytes(), xml.name, mentions=False).figures]
        except ArticleError:
            pass  # the sample's deliberately broken article
    return out


def ours(texts: list[str], args: argparse.Namespace) -> list[str]:
    return learn_vocab(count_words(texts, True), args.vocab_size, args.min_frequency, SPECIAL_TOKENS)


def hf(texts: list[str], args: argparse.Namespace) -> list[str]:
    wp = BertWordPieceTokenizer(lowercase=True, strip_accents=True)
    wp.train_from_iterator(texts, vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                           special_tokens=SPECIAL_TOKENS, show_progress=False)
    vocab = wp.get_vocab()
    return sorted(vocab, key=vocab.get)


def tokens_per_caption(vocab: list[str], texts: list[str]) -> float:
    path = Path(__file__).with_name(".vocab.tmp.txt")
    path.write_text("\n".join(vocab) + "\n")
    try:
        tok = BertTokenizerFast(vocab_file=str(path), do_lower_case=True, strip_accents=True)
    finally:
        path.unlink()
    return sum(len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]) / len(texts)


def digest_in_fresh_process(trainer: str, args: argparse.Namespace) -> str:
    cmd = [sys.executable, __file__, "--digest", trainer, "--repeat", "1",
           "--vocab-size", str(args.vocab_size), "--min-frequency", str(args.min_frequency)]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=10, help="copies of the caption set (more text, same words)")
    ap.add_argument("--vocab-size", type=int, default=30522)
    ap.add_argument("--min-frequency", type=int, default=2)
    ap.add_argument("--digest", choices=("ours", "hf"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    base = captions()
    trainers = {"ours": ours, "hf": hf}
    if args.digest:
        print(hashlib.sha256("\n".join(trainers[args.digest](base, args)).encode()).hexdigest())
        return
    texts = base * args.repeat
    seconds, vocabs = {}, {}
    for name in ("hf", "ours", "hf", "ours"):  # alternate; keep the faster of two runs each
        t0 = time.perf_counter()
        vocabs[name] = trainers[name](texts, args)
        seconds[name] = min(seconds.get(name, float("inf")), time.perf_counter() - t0)
    same_twice = {n: len({digest_in_fresh_process(n, args) for _ in range(2)}) == 1 for n in trainers}
    print(json.dumps({
        "benchmark": "tokenizer", "baseline": "tokenizers BertWordPieceTokenizer.train_from_iterator",
        "captions": len(texts), "vocab_size": args.vocab_size,
        "captions_per_s": {n: round(len(texts) / s) for n, s in seconds.items()},
        "ratio": round(seconds["hf"] / seconds["ours"], 2), "target": 1.0,  # captions/s; and deterministic
        "vocab": {n: len(v) for n, v in vocabs.items()},
        "share_of_hf_vocab": round(len(set(vocabs["ours"]) & set(vocabs["hf"])) / len(vocabs["hf"]), 3),
        "tokens_per_caption": {n: round(tokens_per_caption(v, base), 2) for n, v in vocabs.items()},
        "same_vocab_in_two_fresh_processes": same_twice,
    }))


if __name__ == "__main__":
    main()
