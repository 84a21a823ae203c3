"""Content digests of the files and folders a params value names, so DVC can see them change.

dvc.yaml can only list fixed paths, but some inputs are named in params (a starting model, a
tokenizer, the evaluation sets) and may sit outside the project. A digest of what such a path holds
is written to a file DVC does track. It depends on content and relative names only, not on where
the tree lives or its mtimes, so two machines holding the same inputs agree and nothing reruns.
Hidden entries and ``__pycache__`` are left out: tools write them beside a model (``hf download``
keeps timestamps in ``.cache/``), and no loader reads them. Links are followed, as the loaders do.
Hashing a large dataset again on every run would cost minutes: a file whose size, mtimes, inode and
device are unchanged reuses its last hash, as DVC's own state database does.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .errors import DataError
from .io import is_hidden, write_json_atomic

CHUNK = 1 << 20
RACY_NS = 2_000_000_000  # a file changed this recently may change again within one mtime tick: not cached


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


class DigestCache:
    """Last hashes by absolute file path, each valid while the file's stat stamp holds; ``path=None``
    keeps them in memory only."""

    def __init__(self, path: Path | None = None):
        self.path = path
        try:
            known = json.loads(path.read_text()) if path is not None and path.is_file() else {}
        except (OSError, ValueError):  # a damaged cache only costs hashing again
            known = {}
        self._known: dict[str, Any] = known if isinstance(known, dict) else {}
        self._read: dict[str, list] = {}  # this run's entries
        self.hashed_bytes = 0

    def file_sha256(self, path: Path) -> tuple[str, int]:
        """The file's hash and size."""
        st = path.stat()
        key, stamp = str(path.resolve()), _stamp(st)
        known = self._read.get(key) or self._known.get(key)
        if not (isinstance(known, list) and known[:-1] == stamp and isinstance(known[-1], str)):
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                while chunk := fh.read(CHUNK):
                    digest.update(chunk)
            known = [*stamp, digest.hexdigest()]
            self.hashed_bytes += st.st_size
        self._read[key] = known
        return known[-1], st.st_size

    def save(self) -> None:
        """Keep the entries of this run only, so a removed dataset does not linger in the cache, and not
        those of files changed within the last mtime tick, which may change again unseen."""
        if self.path is not None:
            now = time.time_ns()
            write_json_atomic(self.path, {k: v for k, v in self._read.items() if now - v[1] > RACY_NS})


def _skipped(name: str) -> bool:
    return is_hidden(name) or name == "__pycache__"


def _files(root: Path, label: str) -> list[Path]:
    """Every file under ``root`` in a fixed order, through links (a folder reached twice, once)."""
    def unreadable(exc: OSError) -> None:
        raise DataError(f"{label}: cannot list {exc.filename}: {exc.strerror}") from exc

    found, seen = [], set()
    for folder, dirs, names in os.walk(root, onerror=unreadable, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree, or a second link to one folder
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not _skipped(d))
        found += [Path(folder) / n for n in sorted(names) if not _skipped(n) and (Path(folder) / n).is_file()]
    return found


def listing_digest(folder: Path, label: str) -> dict[str, Any]:
    """``{"listing_sha256", "files", "bytes"}`` of the names and sizes of every file under ``folder``: what
    changes when files come, go or change size, at the cost of a walk (a stat per file, no reads)."""
    lines, total = [], 0
    for file in _files(folder, label):
        try:
            size = file.stat().st_size
        except OSError as exc:
            raise DataError(f"{label}: cannot read {file}: {exc}") from exc
        lines.append(os.fsencode(file.relative_to(folder).as_posix()) + b"\t" + str(size).encode() + b"\n")
        total += size
    return {"listing_sha256": hashlib.sha256(b"".join(lines)).hexdigest(), "files": len(lines), "bytes": total}


def tree_digest(path: Path, cache: DigestCache, label: str, files: list[Path] | None = None) -> dict[str, Any]:
    """``{"sha256", "files", "bytes"}`` of a file or folder (names relative to it, each file's hash), or of
    the ``files`` under folder ``path`` that a list names; a missing path or an unreadable file or folder
    is a DataError naming it and ``label`` (the params key)."""
    if not path.exists():
        raise DataError(f"{label}: {path} does not exist")
    if files is None:
        files = [path] if path.is_file() else _files(path, label)
    lines, total = [], 0
    for file in tqdm(files, desc=f"inputs: {label}", unit="file", disable=len(files) < 1000):
        name = file.name if file == path else file.relative_to(path).as_posix()
        try:
            sha256, size = cache.file_sha256(file)
        except OSError as exc:
            raise DataError(f"{label}: cannot read {file}: {exc}") from exc
        lines.append(os.fsencode(name) + b"\t" + sha256.encode() + b"\n")
        total += size
    return {"sha256": hashlib.sha256(b"".join(lines)).hexdigest(), "files": len(files), "bytes": total}
