"""DVC stage: the vocabulary → models/tokenizer.

``tokenizer.source: train`` learns a domain WordPiece vocabulary from the train captions, the
same one on every run (``model/wordpiece.py``); a dir (or
``package:<module>``) takes that HF tokenizer as it is — the one a pretrained text tower needs.
"""
from __future__ import annotations

import shutil
import time
from argparse import Namespace

import mlflow
import pandas as pd

from biomedclip_factory.corpus.table import TABLE_NAME, split_captions
from biomedclip_factory.errors import DataError
from biomedclip_factory.io import replace_dir, write_json_atomic
from biomedclip_factory.model.sources import resolve_pretrained_dir
from biomedclip_factory.model.tokenizer import copy_tokenizer, train_wordpiece
from biomedclip_factory.params import load_section
from biomedclip_factory.tracking import stage_run

from .common import ROOT, run_stage, summary


def main(a: Namespace) -> None:
    p = load_section("tokenizer", ROOT / "params.yaml")
    context_length = load_section("model", ROOT / "params.yaml").section("text").positive("context_length")
    source, table, out = p.get("source", str, "train"), a.pairs / TABLE_NAME, a.tokenizer
    if not table.is_file():
        raise DataError(f"tokenizer: {table} is missing (run the align stage)")
    captions = int((pd.read_parquet(table, columns=["split"])["split"] == "train").sum())
    pretrained = None if source == "train" else resolve_pretrained_dir(source, "tokenizer.source", ROOT)
    with stage_run("tokenizer", ROOT, p.raw()):
        t0 = time.perf_counter()
        staging = out.with_name(f"{out.name}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        if pretrained is None:
            vocab = train_wordpiece(split_captions(table, "train"), staging, p.positive("vocab_size"),
                                    p.positive("min_frequency"), p.get("lowercase", bool), context_length, progress=True)
        else:
            vocab = copy_tokenizer(pretrained, staging, context_length)
        replace_dir(staging, out)
        seconds = time.perf_counter() - t0
        metrics = {"captions": captions, "vocab_size": vocab, "captions_per_s": captions / max(seconds, 1e-9)}
        write_json_atomic(a.metrics, metrics)
        mlflow.log_metrics(metrics)
    summary("tokenizer", captions, vocab, 0, seconds, "captions")


if __name__ == "__main__":
    run_stage("tokenizer", main, ("pairs", "tokenizer", "metrics"))
