"""Atomic file writes: a reader (or a resumed run) never sees a half-written file under its final name."""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable


_UMASK = os.umask(0)
os.umask(_UMASK)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; final files get the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sweep_partial_writes(root: Path) -> int:
    """Delete temp files that an interrupted ``write_bytes_atomic`` (kill -9) left under ``root``.

    Call it only while nothing else writes there; returns how many were removed.
    """
    stale = [p for p in root.rglob(".*.tmp") if p.is_file()] if root.is_dir() else []
    for path in stale:
        path.unlink()
    return len(stale)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    write_bytes_atomic(path, text.encode())


def write_csv_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    """A header row from the first row's keys, then one line per row (DVC plots' input)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, buf.getvalue().encode())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]
