"""What every stage does the same way: take its paths from dvc.yaml's command, report errors by name,
print a summary."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

from biomedclip_factory.errors import FactoryError
from biomedclip_factory.io import relative_to

ROOT = Path(__file__).resolve().parent.parent


def summary(stage: str, n_in: int, n_out: int, rejected: int, seconds: float, unit: str) -> str:
    rate = n_in / seconds if seconds > 0 else 0.0
    line = f"{stage}: {n_in} in, {n_out} out, {rejected} rejected, {rate:.1f} {unit}/s ({seconds:.1f} s)"
    print(line, flush=True)
    return line


def stage_paths(stage: str, names: tuple[str, ...], argv: list[str] | None = None) -> argparse.Namespace:
    """The stage's inputs and outputs, each a required ``--name PATH`` that dvc.yaml's ``cmd`` passes, so the
    DAG that declares a path is the one place naming it. Relative paths are taken from the project root,
    like the ones in params.yaml."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{stage}",
                                     description=f"The {stage} stage (dvc.yaml's command passes every path).")
    for name in names:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True, metavar="PATH", type=_project_path)
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # DeepSpeed's launcher adds it
    return parser.parse_args(argv)


def _project_path(text: str) -> Path:
    # Normalised, not resolved: a DVC out may be a link into the cache, and must be replaced, not written through.
    path = Path(os.path.normpath(ROOT / Path(text).expanduser()))  # an absolute PATH stays itself under ``/``
    if path == ROOT or path in ROOT.parents:
        raise argparse.ArgumentTypeError(f"{text!r} is the project or above it, not a stage's input or output")
    return path


def relative_to_project(path: Path) -> str:
    """How a path appears in committed metrics: relative to the project wherever it is checked out."""
    return relative_to(path, ROOT)


def run_stage(stage: str, body: Callable[[argparse.Namespace], None], paths: tuple[str, ...]) -> None:
    """Run ``body`` on the stage's paths; a user-caused error exits 2 with one clear line instead of a traceback."""
    args = stage_paths(stage, paths)
    try:
        body(args)
    except FactoryError as exc:
        print(f"{stage}: error: {exc}", file=sys.stderr)
        sys.exit(2)
