"""What every stage does the same way: take its paths from dvc.yaml's command, report errors by name,
print a summary."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from biomedclip_factory.errors import FactoryError

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
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True, metavar="PATH",
                            type=lambda p: ROOT / p)  # an absolute PATH stays itself under ``/``
    return parser.parse_args(argv)


def run_stage(stage: str, body: Callable[[argparse.Namespace], None], paths: tuple[str, ...]) -> None:
    """Run ``body`` on the stage's paths; a user-caused error exits 2 with one clear line instead of a traceback."""
    args = stage_paths(stage, paths)
    try:
        body(args)
    except FactoryError as exc:
        print(f"{stage}: error: {exc}", file=sys.stderr)
        sys.exit(2)
