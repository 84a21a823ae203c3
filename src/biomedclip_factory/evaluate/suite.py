"""What the evaluate stage scores, read from params, and the scoring of one model on it.

A suite is retrieval on the shard splits, the zero-shot sets, the linear-probe sets and the VQA sets,
all from ``evaluate:`` in params, so a dataset is added without code. One bad dataset is reported by
name in the result; the others still run.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..errors import DataError, ParamsError
from ..params import Section
from ..shards.loader import CaptionCollator, eval_batches, split_size
from .embed import Encoder
from .linear_probe import ProbeTask, evaluate_linear_probe
from .models import load_encoder
from .retrieval import retrieval_metrics
from .vqa import VqaTask, evaluate_vqa
from .zeroshot import METRICS, ZeroShotTask, evaluate_zeroshot

OURS = "ours"


@dataclass(frozen=True)
class Suite:
    batch_size: int
    splits: list[str]
    workers: int = 0  # decoding the datasets
    zeroshot: list[ZeroShotTask] = field(default_factory=list)
    probes: list[ProbeTask] = field(default_factory=list)
    vqa: list[VqaTask] = field(default_factory=list)

    @classmethod
    def from_params(cls, p: Section, root: Path) -> "Suite":
        """``evaluate:``; dataset paths are relative to ``root`` (the project)."""
        return cls(batch_size=p.positive("batch_size"), workers=p.count("num_workers", 0),
                   splits=[str(s) for s in p.get("retrieval_splits", list)],
                   zeroshot=zeroshot_tasks(p, root), probes=probe_tasks(p, root), vqa=vqa_tasks(p, root))

    def named_paths(self) -> dict[str, Path]:
        """Every dataset file or folder params name, by its key under ``evaluate``."""
        paths = {f"zeroshot.{t.name}.path": t.path for t in self.zeroshot}
        for probe in self.probes:
            paths |= {f"linear_probe.sets.{probe.name}.{role}": getattr(probe, role).path for role in ("train", "test")}
        for task in self.vqa:
            paths |= {f"vqa.{task.name}.{part}": getattr(task, part) for part in ("images", "train", "test", "answers")}
        return paths


def models_from_params(p: Section, ours: str) -> dict[str, tuple[str, str | None]]:
    """Every model to score, ``ours`` first: name → (source, the text-tower dir a hub snapshot needs)."""
    others = {str(k): model_entry(p.section("models"), str(k)) for k in p.get("models", dict, {})}
    if OURS in others:
        raise ParamsError(f"params: 'evaluate.models' must not redefine '{OURS}' (our trained model)")
    return {OURS: (ours, None), **others}


def zeroshot_tasks(p: Section, root: Path) -> list[ZeroShotTask]:
    suite = p.section("zeroshot")
    tasks = []
    for name in suite.raw():
        t = suite.section(name)
        tasks.append(ZeroShotTask(
            name=name, path=root / Path(t.get("path", str)),
            classnames={str(k): str(v) for k, v in t.get("classnames", dict).items()},
            templates=tuple(str(x) for x in t.get("templates", list)),
            metric=t.choice("metric", METRICS, "accuracy"), npz_split=t.get("npz_split", str, "test")))
    return tasks


def probe_tasks(p: Section, root: Path) -> list[ProbeTask]:
    """``evaluate.linear_probe``: shared fractions and seeds, a train and a test set per dataset."""
    if "linear_probe" not in p.raw():
        return []
    probe = p.section("linear_probe")
    fractions, seeds = probe.get("fractions", list), probe.get("seeds", list)
    if not fractions or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1 for f in fractions):
        raise ParamsError(f"params: 'evaluate.linear_probe.fractions' must be numbers in (0, 1], got {fractions!r}")
    if any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ParamsError(f"params: 'evaluate.linear_probe.seeds' must be integers, got {seeds!r}")
    fractions, seeds = tuple(float(f) for f in fractions), tuple(seeds) or (0,)
    sets = probe.section("sets")
    tasks = []
    for name in sets.raw():
        t = sets.section(name)
        classnames = {str(k): str(v) for k, v in t.get("classnames", dict).items()}
        metric = t.choice("metric", METRICS, "accuracy")
        splits = {role: ZeroShotTask(name=f"{name} ({role})", path=root / Path(t.get(role, str)), classnames=classnames,
                                     templates=(), metric=metric, npz_split=t.get(f"{role}_split", str, role))
                  for role in ("train", "test")}
        tasks.append(ProbeTask(name, splits["train"], splits["test"], fractions, seeds))
    return tasks


def vqa_tasks(p: Section, root: Path) -> list[VqaTask]:
    """``evaluate.vqa``: per dataset its images, train/test records, answer list and the head's recipe."""
    if "vqa" not in p.raw():
        return []
    suite = p.section("vqa")
    return [VqaTask(name=name, **{k: root / Path(t.get(k, str)) for k in ("images", "train", "test", "answers")},
                    epochs=t.positive("epochs", int, 200), hidden=t.positive("hidden", int, 256),
                    lr=t.positive("lr", float, 1e-3), seed=t.get("seed", int, 0))
            for name in suite.raw() for t in [suite.section(name)]]


def model_entry(models: Section, name: str) -> tuple[str, str | None]:
    """``name: local-dir:<dir> | models:/<name>@<alias>``, or for a hub snapshot (the released
    BiomedCLIP) ``name: {source: local-dir:<snapshot>, text_dir: <local copy of the BERT it names>}``."""
    if isinstance(models.raw()[name], dict):
        entry = models.section(name)
        return entry.get("source", str), entry.get("text_dir", str, None)
    return models.get(name, str), None


EXAMPLES = 8  # images in the retrieval plot, each with its top text


def split_retrieval(encoder: Encoder, shards: Path, split: str, batch_size: int) -> tuple[dict, list[dict], torch.Tensor]:
    """Metrics, the samples' metadata and the similarity of the first ``EXAMPLES`` images to every text
    (all the retrieval plot shows; the whole matrix would not fit at PMC scale)."""
    collate = CaptionCollator(encoder.tokenizer, encoder.context_length)
    images, texts, meta = [], [], []
    for batch_images, tokens, batch_meta in eval_batches(shards, split, encoder.preprocess, collate, batch_size,
                                                         num_workers=encoder.workers):
        i, t = encoder.embed_batch(batch_images, tokens)
        images.append(i)
        texts.append(t)
        meta += batch_meta
    # Decoding workers skip an unreadable sample where the parent cannot count it: the split's own
    # size (sizes.json) says how many the gallery lost.
    unreadable = split_size(shards, split) - len(meta)
    if unreadable:
        print(f"evaluate: split '{split}': {unreadable} of {len(meta) + unreadable} samples unreadable, "
              "left out of the gallery", flush=True)
    if not images:
        return {"gallery_size": 0, "unreadable": unreadable}, [], torch.empty(0)
    image_emb, text_emb = torch.cat(images), torch.cat(texts)
    return {**retrieval_metrics(image_emb, text_emb), "unreadable": unreadable}, meta, image_emb[:EXAMPLES] @ text_emb.T


def evaluate_model(encoder: Encoder, suite: Suite, shards: Path, keep: dict | None = None) -> dict:
    """Every task of ``suite`` for one model; with ``keep``, each split's metadata and example scores."""
    result: dict = {"retrieval": {}, "zeroshot": {}, "linear_probe": {}, "vqa": {}}
    for split in suite.splits:
        result["retrieval"][split], meta, sim = split_retrieval(encoder, shards, split, suite.batch_size)
        if keep is not None:
            keep[split] = (meta, sim)
    runs = [("zeroshot", t.name, evaluate_zeroshot, t) for t in suite.zeroshot]
    runs += [("linear_probe", t.name, evaluate_linear_probe, t) for t in suite.probes]
    runs += [("vqa", t.name, evaluate_vqa, t) for t in suite.vqa]
    for kind, name, run, task in runs:
        try:
            result[kind][name] = run(encoder, task, suite.batch_size)
        except DataError as exc:  # one bad dataset is reported; the others still run
            result[kind][name] = {"error": str(exc)}
            print(f"evaluate: {exc}", flush=True)
    return result


def evaluate_models(models: dict[str, tuple[str, str | None]], suite: Suite, root: Path, shards: Path,
                    keep: dict) -> dict:
    """The report of every model in ``models``; one that cannot be loaded is reported by name and the
    rest still run, except ours (``OURS``), whose absence is the stage's error. ``keep`` gets our
    retrieval examples."""
    report: dict = {}
    for name, (spec, text_dir) in models.items():
        try:
            encoder = replace(load_encoder(spec, root, text_dir), workers=suite.workers)
        except DataError as exc:
            if name == OURS:
                raise
            report[name] = {"error": str(exc), "source": spec}
            print(f"evaluate: {exc}", flush=True)
            continue
        report[name] = {"source": spec, **evaluate_model(encoder, suite, shards, keep if name == OURS else None)}
    return report


def failures(report: dict) -> int:
    """Models that could not be loaded plus datasets that could not be scored."""
    return sum(1 for r in report.values() if "error" in r) + sum(
        1 for r in report.values() for kind in ("zeroshot", "linear_probe", "vqa")
        for task in r.get(kind, {}).values() if "error" in task)


def items_scored(report: dict, splits: list[str]) -> int:
    """Retrieval pairs, zero-shot images, probe test images and VQA questions, over every model."""
    scored = sum(r["retrieval"][s]["gallery_size"] for r in report.values() if "retrieval" in r for s in splits)
    for result in report.values():
        scored += sum(z.get("images", 0) for z in result.get("zeroshot", {}).values())
        scored += sum(z.get("test_images", 0) for z in result.get("linear_probe", {}).values())
        scored += sum(z.get("test_questions", 0) for z in result.get("vqa", {}).values())
    return scored
