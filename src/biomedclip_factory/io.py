"""Atomic file writes: a reader (or a resumed run) never sees a half-written file under its final name."""
from __future__ import annotations

import csv
import ctypes
import glob
import io
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from .errors import DataError


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_writer(path: Path) -> Iterator[IO[bytes]]:
    """A binary file that appears under ``path`` only once the block finishes without error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; final files get the usual mode
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where
    the kernel, libc or filesystem cannot, and nothing was changed."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def replace_dir(staging: Path, target: Path) -> None:
    """Put the fully written ``staging`` dir in ``target``'s place; the old ``target`` goes only after.

    A stage builds its output dir beside it and calls this last, so a stage that fails (a bad param,
    a crash, a kill) leaves the previous output exactly as it was. The swap is one atomic exchange
    where the system has one (Linux): no moment exists without a ``target``. Elsewhere it is two
    renames, and a kill between them leaves the old output as ``<target>.old``.
    """
    old = target.with_name(f"{target.name}.old")
    _remove(old)
    if target.exists() and not target.is_symlink() and exchange_paths(staging, target):
        shutil.rmtree(staging)  # now the old output
        return
    if target.exists() or target.is_symlink():
        target.rename(old)
    staging.rename(target)
    _remove(old)


def _remove(path: Path) -> None:
    """Delete a dir, or just the link when it is a symlink (never what the link points at)."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_writer(path) as fh:
        fh.write(data)


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
    """Streamed: ``rows`` may be a generator over more rows than fit in memory."""
    with atomic_writer(path) as fh:
        for row in rows:
            fh.write(jsonl_line(row))


def jsonl_line(row: dict[str, Any]) -> bytes:
    """One JSONL row as every writer here writes it: sorted keys, one line."""
    return (json.dumps(row, sort_keys=True) + "\n").encode()


def write_csv_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    """A header row from the first row's keys, then one line per row (DVC plots' input)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, buf.getvalue().encode())


def is_hidden(name: str) -> bool:
    """A dot-name is never data: macOS's ``._`` copies and ``.DS_Store``, tools' caches (``.cache``, ``.git``)."""
    return name.startswith(".")


def relative_to(path: Path, root: Path) -> str:
    """``path`` as params and committed metrics name it: relative to ``root`` (the project) when
    under it, by name only (links not resolved), so it reads alike wherever the project is checked out."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def relative_to_cwd(path: Path) -> str:
    """``path`` as records name it: relative to the working dir (the project, where DVC runs every
    stage) when inside it, links resolved, so what a stage writes reads alike in every checkout."""
    resolved, here = path.resolve(), Path.cwd().resolve()
    return resolved.relative_to(here).as_posix() if resolved.is_relative_to(here) else str(path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return list(iter_jsonl(path))


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The rows one at a time, for files with more rows than should sit in memory; a line that is
    not JSON is a DataError naming the file and the line."""
    with open(path) as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not a JSON line ({exc.msg}): {line.strip()[:80]!r}") from exc


def cut_partial_last_line(path: Path) -> None:
    """Cut off what a killed writer left half-written at the end of a line-by-line append log, so
    the next append starts on a fresh line. Rows are only ever half-written at the end."""
    if not path.is_file():
        return
    with path.open("rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        chunk = 1 << 16
        end = size
        while end > 0:  # back from the end to the last newline, reading only the tail
            start = max(0, end - chunk)
            fh.seek(start)
            newline = fh.read(end - start).rfind(b"\n")
            if newline >= 0:
                fh.truncate(start + newline + 1)
                return
            end = start
        fh.truncate(0)


def read_append_log(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL append log, after ``cut_partial_last_line``; a bad line anywhere else is
    real corruption and raises."""
    if not path.is_file():
        return []
    cut_partial_last_line(path)
    return read_jsonl(path)


def append_log_row(fh: IO[bytes], row: dict[str, Any]) -> None:
    """One row of an append log (a binary handle), flushed: a kill -9 after this returns cannot lose it."""
    fh.write(jsonl_line(row))
    fh.flush()
