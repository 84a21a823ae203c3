"""What the evaluate stage scores, read from ``evaluate:`` in params: retrieval splits, zero-shot,
linear-probe and VQA sets, and the models. No torch here: the ``inputs`` stage reads the same params
on every ``dvc repro`` to digest the datasets they name, and must start at once."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ParamsError
from ..params import Section

# The towers' precision in evaluation: fp32 (a released model's figures, to the last digit), or bf16
# autocast over the fp32 weights (open_clip's amp_bf16: faster on a GPU, scores a little apart from fp32's).
PRECISIONS = ("fp32", "amp_bf16")
PRECISION_BITS = {"fp32": 32, "amp_bf16": 16}  # as a score's metrics record it (MLflow metrics are numbers)

OURS = "ours"
METRICS = ("accuracy", "balanced_accuracy", "auroc")


@dataclass(frozen=True)
class ZeroShotTask:
    name: str
    path: Path
    classnames: dict[str, str]  # folder name (or npz label index) → class name used in prompts
    templates: tuple[str, ...]
    metric: str = "accuracy"
    npz_split: str = "test"


@dataclass(frozen=True)
class ProbeTask:
    name: str
    train: ZeroShotTask  # the dataset forms and class list are the zero-shot suite's; templates unused
    test: ZeroShotTask
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)


@dataclass(frozen=True)
class VqaTask:
    name: str
    images: Path
    train: Path
    test: Path
    answers: Path  # JSON list of the candidate answers
    epochs: int = 200
    hidden: int = 256
    lr: float = 1e-3
    seed: int = 0


@dataclass(frozen=True)
class Suite:
    batch_size: int
    splits: list[str]
    workers: int = 0  # decoding the datasets
    precision: str = "fp32"  # the towers' (``PRECISIONS``)
    zeroshot: list[ZeroShotTask] = field(default_factory=list)
    probes: list[ProbeTask] = field(default_factory=list)
    vqa: list[VqaTask] = field(default_factory=list)

    @classmethod
    def from_params(cls, p: Section, root: Path) -> "Suite":
        """``evaluate:``; dataset paths are relative to ``root`` (the project)."""
        suite = cls(batch_size=p.positive("batch_size"), workers=p.count("num_workers", 0),
                    precision=p.choice("precision", PRECISIONS, "fp32"),
                    splits=[str(s) for s in p.get("retrieval_splits", list)],
                    zeroshot=zeroshot_tasks(p, root), probes=probe_tasks(p, root), vqa=vqa_tasks(p, root))
        dotted = [f"{kind}.{task.name}" for kind, task in suite.tasks() if "." in task.name]
        if dotted or any("." in split for split in suite.splits):
            raise ParamsError(f"params: evaluate's set and split names may not hold a '.', which joins the parts of "
                              f"a metric's name ('zeroshot.<set>.score'): {dotted or suite.splits}")
        return suite

    def tasks(self) -> list[tuple[str, ZeroShotTask | ProbeTask | VqaTask]]:
        """Every set to score, with its kind (its section of the report)."""
        return ([("zeroshot", t) for t in self.zeroshot] + [("linear_probe", t) for t in self.probes]
                + [("vqa", t) for t in self.vqa])

    def named_paths(self) -> dict[str, Path]:
        """Every dataset file or folder params name, by its key under ``evaluate``."""
        return {key: path for kind, task in self.tasks() for key, path in task_paths(kind, task).items()}


def task_paths(kind: str, task: ZeroShotTask | ProbeTask | VqaTask) -> dict[str, Path]:
    """The files or folders a set's params entry names, by their key under ``evaluate``."""
    if isinstance(task, ProbeTask):
        return {f"{kind}.sets.{task.name}.{role}": getattr(task, role).path for role in ("train", "test")}
    if isinstance(task, VqaTask):
        return {f"{kind}.{task.name}.{part}": getattr(task, part) for part in ("images", "train", "test", "answers")}
    return {f"{kind}.{task.name}.path": task.path}


def models_from_params(p: Section, ours: str) -> dict[str, tuple[str, str | None]]:
    """Every model to score, ``ours`` first: name → (source, the text-tower dir a hub snapshot needs)."""
    others = {str(k): model_entry(p.section("models"), str(k)) for k in p.get("models", dict, {})}
    if OURS in others:
        raise ParamsError(f"params: 'evaluate.models' must not redefine '{OURS}' (our trained model)")
    return {OURS: (ours, None), **others}


def _names_the_class(template: str) -> bool:
    """Whether ``template.format(class name)`` works and depends on the name, as the prompts are built."""
    try:
        return template.format("α") != template.format("β")
    except (IndexError, KeyError, ValueError):
        return False


def zeroshot_tasks(p: Section, root: Path) -> list[ZeroShotTask]:
    suite = p.section("zeroshot")
    tasks = []
    for name in suite.raw():
        t = suite.section(name)
        classnames = {str(k): str(v) for k, v in t.get("classnames", dict).items()}
        templates = tuple(str(x) for x in t.get("templates", list))
        if not classnames or not templates or not all(map(_names_the_class, templates)):
            # an empty list has no class embedding to compare with; a template without {} gives every class
            # the same prompt, and so the same embedding
            raise ParamsError(f"params: '{t.path}' needs classnames and templates, each template with one {{}} for "
                              f"the class name; got {len(classnames)} classnames, templates {list(templates)!r}")
        tasks.append(ZeroShotTask(
            name=name, path=root / Path(t.get("path", str)), classnames=classnames, templates=templates,
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
