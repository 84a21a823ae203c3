"""Atomic file writes: a reader (or a resumed run) never sees a half-written file under its final name."""
from __future__ import annotations

import csv
import glob
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable


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


def sweep_partial_writes(folder: Path, name: str = "") -> int:
    """Delete what an interrupted atomic write (kill -9) left directly in ``folder``: the hidden
    ``.<name>….tmp`` temp files of ``write_bytes_atomic`` and staging dirs of the same pattern.

    Only entries whose name starts with ``.<name>`` are touched; call it while nothing else
    writes them. Returns how many were removed.
    """
    stale = list(folder.glob(f".{glob.escape(name)}*.tmp")) if folder.is_dir() else []
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
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


def read_append_log(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL log that is appended to line by line, after cutting off what a killed
    writer left half-written at its end, so the next append starts on a fresh line.

    Rows are only ever half-written at the end; a bad line anywhere else is real corruption and raises.
    """
    if not path.is_file():
        return []
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        os.truncate(path, complete)
    return [json.loads(line) for line in data[:complete].splitlines() if line.strip()]


def append_log_row(fh: IO[str], row: dict[str, Any]) -> None:
    """One row of an append log, flushed: a kill -9 after this returns cannot lose it."""
    fh.write(json.dumps(row, sort_keys=True) + "\n")
    fh.flush()
