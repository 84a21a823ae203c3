"""What each stage reads because params name it, and a record of it that changes when it does.

The ``inputs`` stage writes one such record per consuming stage; dvc.yaml lists the record as that
stage's dep, so swapping the 224-px model the 384-px phase starts from, or a zero-shot set, reruns
what read it. Each record holds the reference as params wrote it (a ``package:`` or registry
reference rather than where it resolved to on this machine) and a content digest.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from .digest import DigestCache, listing_digest, tree_digest
from .errors import ParamsError
from .evaluate.tasks import OURS, Suite, models_from_params
from .io import relative_to
from .model.sources import init_sources, resolve_pretrained_dir
from .params import load_section
from .pmc.selection import local_source


@dataclass(frozen=True)
class Listing:
    """Files a list file names (a pairs JSONL and the images it lists, under its folder), the list first."""
    files: tuple[Path, ...]


@dataclass(frozen=True)
class Mirror:
    """A local mirror of PMC, known by its files' names and sizes: new article versions come as new files,
    and hashing the content of terabytes would cost hours on a first run and a stat of each file after."""
    folder: Path


# a local path (by content), a registry reference (``models:/…``), a listing, or a mirror
Named = Union[Path, str, Listing, Mirror]
CONSUMERS = ("scrape", "tokenizer", "pretrain", "evaluate")


def named_inputs(params_file: Path, root: Path) -> dict[str, dict[str, tuple[str, Named]]]:
    """Per consuming stage: params key → (reference as written, what it names)."""
    scrape, tokenizer, model, evaluate = (load_section(s, params_file)
                                          for s in ("scrape", "tokenizer", "model", "evaluate"))
    source = tokenizer.get("source", str, "train")
    found: dict[str, dict[str, tuple[str, Named]]] = {stage: {} for stage in CONSUMERS}
    mirror = local_source(scrape, root)  # a remote one is listed by every scrape the retrain flow runs
    if mirror is not None:
        found["scrape"]["scrape.source"] = (scrape.get("source", str),
                                            Listing(tuple(mirror)) if isinstance(mirror, list) else Mirror(mirror))
    if source != "train":
        found["tokenizer"]["tokenizer.source"] = (source, resolve_pretrained_dir(source, "tokenizer.source", root))
    model_dir, text_dir = init_sources(model, root)
    if model_dir is not None:
        found["pretrain"]["model.init_from"] = (model.get("init_from", str), model_dir)
    if text_dir is not None:
        found["pretrain"]["model.text.init_from"] = (model.section("text").get("init_from", str), text_dir)
    found["evaluate"] = {f"evaluate.{key}": (relative_to(path, root), path)
                         for key, path in Suite.from_params(evaluate, root).named_paths().items()}
    others = models_from_params(evaluate, OURS)
    others.pop(OURS)  # our model dir is evaluate's own dep
    for name, (spec, snapshot_text_dir) in others.items():
        if spec.startswith("models:/"):
            found["evaluate"][f"evaluate.models.{name}"] = (spec, spec)
        else:
            found["evaluate"][f"evaluate.models.{name}"] = (spec, root / spec.removeprefix("local-dir:"))
            if snapshot_text_dir:
                found["evaluate"][f"evaluate.models.{name}.text_dir"] = (snapshot_text_dir, root / snapshot_text_dir)
    return found


def _paths(named_as: Path | Listing | Mirror) -> tuple[Path, ...]:
    if isinstance(named_as, Listing):
        return named_as.files
    return (named_as.folder,) if isinstance(named_as, Mirror) else (named_as,)


def check_named_paths(named: dict[str, dict[str, tuple[str, Named]]], outputs: list[Path]) -> None:
    """Fail at the start, not hours in: where training starts, and the tokenizer it copies, must be
    there (a missing evaluation set or model is left to evaluate, which reports it by name and scores
    the rest; a missing scrape source to ``kept_when_absent``), and no named path may be (or hold, or lie
    in) a stage's output, links resolved: every run would change its record and rerun its reader for ever."""
    resolved_outputs = [out.resolve() for out in outputs]
    for stage, entries in named.items():
        for key, (ref, named_as) in entries.items():
            if isinstance(named_as, str):
                continue
            for target in _paths(named_as):
                if not target.exists():
                    if stage in ("evaluate", "scrape"):
                        continue
                    raise ParamsError(f"params: '{key}': {ref} does not exist ({target})")
                real = target.resolve()
                for out, real_out in zip(outputs, resolved_outputs):
                    if real == real_out or real_out in real.parents or real in real_out.parents:
                        raise ParamsError(f"params: '{key}': {ref} overlaps the pipeline's output {out}, which a "
                                          "run rewrites: copy it out first (e.g. cp -r models/clip models/clip-224)")


def record(named: dict[str, tuple[str, Named]], cache: DigestCache, tracking_uri: str) -> dict[str, dict[str, Any]]:
    """params key → the reference and what it names now: a digest, a registry version's weights, or
    ``missing`` (an evaluation set not there yet: evaluate reports it; its arrival reruns evaluate)."""
    records = {}
    for key, (ref, target) in sorted(named.items()):
        if isinstance(target, str):
            entry = registry_weights(target, tracking_uri)
        elif isinstance(target, Listing):
            entry = tree_digest(target.files[0].parent, cache, key, list(target.files))
        elif isinstance(target, Mirror):
            entry = listing_digest(target.folder, key) if target.folder.is_dir() else {"missing": True}
        else:
            entry = tree_digest(target, cache, key) if target.exists() else {"missing": True}
        records[key] = {"ref": ref, **entry}
    return records


Records = dict[str, dict[str, Any]]


def kept_when_absent(records: Records, previous: Records) -> Records:
    """Scrape's records, each one whose source is not on this machine kept as it last was: a clone that
    pulled the data to train or evaluate has no mirror, and a record of its absence would rerun scrape
    there, which would fail. Scrape reruns on such a machine only when asked."""
    kept = {}
    for key, entry in records.items():
        if entry.get("missing") and key in previous and previous[key].get("ref") == entry["ref"]:
            print(f"inputs: {key}: {entry['ref']} is not on this machine; its last record stands (scrape runs "
                  "again here only when forced)", flush=True)
            entry = previous[key]
        kept[key] = entry
    return kept


def registry_weights(ref: str, tracking_uri: str) -> dict[str, Any]:
    """What a ``models:/`` reference names now: the weights of the version it resolves to (their DVC
    hash, the version's ``dvc_data`` tag), else the version's number. By weights, not number: the
    pipeline registers versions and moves aliases itself, and a new version of the same weights
    must not rerun evaluate. A registry that cannot answer gives ``{"version": None}``: evaluate
    then reports that model by name."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    client = MlflowClient(tracking_uri)
    try:
        resolved = get_model_name_and_version(client, ref)
        if len(resolved) == 1:  # a logged model's id: immutable
            return {"model_id": resolved[0]}
        name, version = resolved
        weights = json.loads(client.get_model_version(name, version).tags.get("dvc_data", "{}")).get("models/clip")
    except (MlflowException, ValueError):
        return {"version": None}
    return {"weights": weights} if weights else {"version": str(version)}
