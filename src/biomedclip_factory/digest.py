"""Content digests of the files and folders a params value names, so DVC can see them change.

dvc.yaml can only list fixed paths, but some inputs are named in params (a starting model, a
tokenizer, the evaluation sets) and may sit outside the project. A digest of what such a path holds
is written to a file DVC does track. It depends on content and relative names only, not on where
the tree lives or its mtimes, so two machines holding the same inputs agree and nothing reruns.
Hashing a large dataset again on every run would cost minutes: a file whose size, mtime and inode
are unchanged reuses its last hash, as DVC's own state database does.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .io import write_json_atomic

CHUNK = 1 << 20


class DigestCache:
    """Last hashes by absolute file path, each valid while the file's (size, mtime_ns, inode) hold."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._known: dict[str, list] = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):  # a damaged cache only costs hashing again
            self._known = {}
        self._used: dict[str, list] = {}
        self.hashed_bytes = 0

    def file_sha256(self, path: Path) -> tuple[str, int]:
        """The file's hash and size."""
        st = path.stat()
        key, stamp = str(path.resolve()), [st.st_size, st.st_mtime_ns, st.st_ino]
        known = self._known.get(key)
        if known is None or known[:3] != stamp:
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                while chunk := fh.read(CHUNK):
                    digest.update(chunk)
            known = [*stamp, digest.hexdigest()]
            self.hashed_bytes += st.st_size
        self._used[key] = known
        return known[3], st.st_size

    def save(self) -> None:
        """Keep the entries of this run only, so a removed dataset does not linger in the cache."""
        write_json_atomic(self.path, self._used)


def _files(root: Path) -> list[Path]:
    """Every file under ``root`` in a fixed order; a link to a file counts as that file's content."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        found += [Path(folder) / n for n in sorted(names) if (Path(folder) / n).is_file()]
    return found


def tree_digest(path: Path, cache: DigestCache, label: str) -> dict[str, Any]:
    """``{"sha256", "files", "bytes"}`` of a file or folder (names relative to it, each file's hash),
    or ``{"missing": true}``: a stage reports a missing input itself, and its appearance must rerun it."""
    if not path.exists():
        return {"missing": True}
    files = [path] if path.is_file() else _files(path)
    lines, total = [], 0
    for file in tqdm(files, desc=f"inputs: {label}", unit="file", disable=len(files) < 1000):
        name = file.name if file == path else file.relative_to(path).as_posix()
        sha256, size = cache.file_sha256(file)
        lines.append(f"{name}\t{sha256}\n")
        total += size
    return {"sha256": hashlib.sha256("".join(lines).encode()).hexdigest(), "files": len(files), "bytes": total}
