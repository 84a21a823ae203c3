"""Safe extraction of legacy PMC ``oa_package`` tar.gz archives (and any other article tarball).

An archive is untrusted input: a member may try to write outside the target (``..``, absolute
paths), be a symlink, hard link or device that later writes redirect through, or decompress to
far more than its download (a bomb). Only regular files are written, under the target, each
checked before it is read and counted while it is read; anything else rejects the whole package
with an :class:`ArticleError` naming the archive and the member. Extraction goes to a temporary
sibling that is renamed into place at the end, so a crash or ``kill -9`` never leaves a half
article under its final name.
"""
from __future__ import annotations

import gzip
import io
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable

from ..errors import ArticleError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class PackageLimits:
    """Far above any real article package (a few MB; the largest with videos, a few hundred)."""

    max_members: int = 5_000
    max_member_bytes: int = 1 << 30
    max_total_bytes: int = 4 << 30


def _member_path(label: str, member: tarfile.TarInfo, strip_top: bool) -> PurePosixPath | None:
    """The member's path relative to the target, or None for a directory entry; raises if unsafe."""
    name = member.name.replace("\\", "/")
    if any(ord(c) < 32 for c in name):
        raise ArticleError(f"{label}: member {member.name!r} has control characters in its name")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise ArticleError(f"{label}: member {member.name!r} points outside the package")
    if member.isdir():
        return None
    if not member.isreg():
        kind = "symlink" if member.issym() else "hard link" if member.islnk() else "special file"
        raise ArticleError(f"{label}: member {member.name!r} is a {kind}; only regular files are allowed")
    parts = [p for p in path.parts if p not in ("", ".")]
    if strip_top:
        parts = parts[1:]
    if not parts:
        raise ArticleError(f"{label}: member {member.name!r} has no file name under the top folder")
    return PurePosixPath(*parts)


def extract_package(archive: Path | bytes, dest: Path, limits: PackageLimits = PackageLimits(),
                    strip_top: bool = True, keep: Callable[[str], bool] = lambda rel: True,
                    name: str | None = None) -> list[str]:
    """Extract ``archive`` (a file, or its bytes) into ``dest``, replacing it; returns the written paths.

    ``strip_top`` drops the single top folder legacy packages wrap their files in
    (``PLoS_One_2010_Aug_19_5(8)_e12255/…``), so the files land directly in ``dest``. Members
    for which ``keep(relative path)`` is false are checked like the others but not written.
    ``name`` names the archive in errors (default: the file's name).
    """
    label = name or (archive.name if isinstance(archive, Path) else "package")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        source = io.BytesIO(archive) if isinstance(archive, bytes) else archive
        written = _extract_into(source, label, staging, limits, strip_top, keep)
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(written)


def _extract_into(source: Path | io.BytesIO, label: str, target: Path, limits: PackageLimits, strip_top: bool,
                  keep: Callable[[str], bool]) -> list[str]:
    written: list[str] = []
    seen: set[str] = set()
    total = members = 0
    try:
        raw = open(source, "rb") if isinstance(source, Path) else source
        with raw, _decompressed(raw) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:  # streamed, read once
            for member in tar:
                members += 1
                if members > limits.max_members:
                    raise ArticleError(f"{label}: more than {limits.max_members} members")
                rel = _member_path(label, member, strip_top)
                if rel is None:
                    continue
                if member.size > limits.max_member_bytes:
                    raise ArticleError(f"{label}: member {member.name!r} is {member.size} bytes, "
                                       f"over the {limits.max_member_bytes}-byte limit")
                if total + member.size > limits.max_total_bytes:
                    raise ArticleError(f"{label}: unpacks to more than {limits.max_total_bytes} bytes")
                if str(rel) in seen:
                    raise ArticleError(f"{label}: member {member.name!r} appears twice")
                seen.add(str(rel))
                total += member.size
                if keep(str(rel)):
                    _copy_member(label, tar, member, target.joinpath(*rel.parts))
                    written.append(str(rel))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:  # gzip.BadGzipFile is an OSError
        raise ArticleError(f"{label}: not a readable tar.gz package: {exc}") from exc
    if not written:
        raise ArticleError(f"{label}: the package holds no files" if not seen else
                           f"{label}: the package holds none of the files wanted ({len(seen)} others)")
    return written


def _decompressed(raw: BinaryIO) -> BinaryIO:
    """gzip-decompressing view of ``raw`` when it starts with the gzip magic (tarfile's own stream
    reader crashes with TypeError on a truncated gzip header), else ``raw`` itself (a plain tar)."""
    magic = raw.read(2)
    raw.seek(0)
    return gzip.GzipFile(fileobj=raw, mode="rb") if magic == b"\x1f\x8b" else raw


def _copy_member(label: str, tar: tarfile.TarFile, member: tarfile.TarInfo, out: Path) -> None:
    source = tar.extractfile(member)
    if source is None:
        raise ArticleError(f"{label}: member {member.name!r} cannot be read")
    out.parent.mkdir(parents=True, exist_ok=True)
    copied = 0
    with open(out, "xb") as fh:
        while chunk := source.read(_CHUNK):
            copied += len(chunk)
            if copied > member.size:  # the header lied about the size
                raise ArticleError(f"{label}: member {member.name!r} is longer than its header says")
            fh.write(chunk)
    if copied != member.size:
        raise ArticleError(f"{label}: member {member.name!r} is truncated ({copied} of {member.size} bytes)")
