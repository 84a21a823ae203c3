"""What every stage does the same way: find the project, report errors by name, print a summary."""
from __future__ import annotations

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


def run_stage(stage: str, body: Callable[[], None]) -> None:
    """Run ``body``; a user-caused error exits 2 with one clear line instead of a traceback."""
    try:
        body()
    except FactoryError as exc:
        print(f"{stage}: error: {exc}", file=sys.stderr)
        sys.exit(2)
