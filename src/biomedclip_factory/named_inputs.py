"""What each stage reads because params name it, and a record of it that changes when it does.

The ``inputs`` stage writes one such record per consuming stage; dvc.yaml lists the record as that
stage's dep, so swapping the 224-px model the 384-px phase starts from, or a zero-shot set, reruns
what read it. Each record holds the reference as params wrote it (a ``package:`` or registry
reference rather than where it resolved to on this machine) and a content digest.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from .digest import DigestCache, tree_digest
from .errors import ParamsError
from .evaluate.tasks import OURS, Suite, models_from_params
from .io import relative_to
from .model.sources import init_sources, resolve_pretrained_dir
from .params import load_section

Named = Union[Path, str]  # a local path, or a registry reference (``models:/…``)
CONSUMERS = ("tokenizer", "pretrain", "evaluate")


def named_inputs(params_file: Path, root: Path) -> dict[str, dict[str, tuple[str, Named]]]:
    """Per consuming stage: params key → (reference as written, what it names)."""
    tokenizer, model, evaluate = (load_section(s, params_file) for s in ("tokenizer", "model", "evaluate"))
    source = tokenizer.get("source", str, "train")
    found: dict[str, dict[str, tuple[str, Named]]] = {stage: {} for stage in CONSUMERS}
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


def check_named_paths(named: dict[str, dict[str, tuple[str, Named]]], outputs: list[Path]) -> None:
    """Fail at the start, not hours in: a named path must be there, and must not be (or hold, or lie
    in) a stage's output, whose every run would change the record and rerun its reader for ever."""
    for stage in named.values():
        for key, (ref, target) in stage.items():
            if isinstance(target, str):
                continue
            if not target.exists():
                raise ParamsError(f"params: '{key}': {ref} does not exist ({target})")
            for out in outputs:
                if target == out or out in target.parents or target in out.parents:
                    raise ParamsError(f"params: '{key}': {ref} overlaps the pipeline's output {out}, which a run "
                                      "rewrites: copy it out first (e.g. cp -r models/clip models/clip-224)")


def record(named: dict[str, tuple[str, Named]], cache: DigestCache, tracking_uri: str) -> dict[str, dict[str, Any]]:
    """params key → the reference and its digest (a registry reference: the version it resolves to)."""
    return {key: {"ref": ref, **(registry_version(target, tracking_uri) if isinstance(target, str) else
                                 tree_digest(target, cache, key))}
            for key, (ref, target) in sorted(named.items())}


def registry_version(ref: str, tracking_uri: str) -> dict[str, Any]:
    """The version a ``models:/`` reference resolves to now, so a moved alias reruns the stage. An
    alias not set yet (no champion before the first promotion) or a registry that does not answer
    gives ``None``: evaluate then reports that model by name. A refusal (401/403) is an AccessError."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    from .tracking import REFUSALS, refusals_named

    with refusals_named(tracking_uri):
        try:
            return {"version": str(get_model_name_and_version(MlflowClient(tracking_uri), ref)[-1])}
        except MlflowException as exc:
            if exc.error_code in REFUSALS:
                raise
            return {"version": None}
