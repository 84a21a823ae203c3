"""Legacy tar.gz packages: real layout extracted flat; every escape, link, bomb and corruption refused."""
from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from biomedclip_factory.errors import ArticleError
from biomedclip_factory.pmc.package import PackageLimits, extract_package

from .conftest import SAMPLE_MIRROR

ARTICLE = SAMPLE_MIRROR / "PMC3532326.1"
TOP = "BMC_Res_Notes_2012_Nov_1_5_615"


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def legacy_package(tmp_path: Path) -> Path:
    """A package in the legacy layout (one top folder, .nxml + figures) from a real sample article."""
    members = [_special(f"{TOP}/", tarfile.DIRTYPE)]
    for f in sorted(ARTICLE.iterdir()):
        name = f.name.replace(".xml", ".nxml")
        members.append(_file(f"{TOP}/{name}", f.read_bytes()))
    members.append(_file(f"{TOP}/license.txt", b"CC BY 2.0\n"))
    return _tar(tmp_path / "PMC3532326.tar.gz", members)


def test_a_legacy_package_lands_flat_in_the_target(tmp_path):
    written = extract_package(legacy_package(tmp_path), tmp_path / "out" / "PMC3532326.1")
    expected = sorted([f.name.replace(".xml", ".nxml") for f in ARTICLE.iterdir()] + ["license.txt"])
    assert written == expected
    for f in ARTICLE.iterdir():
        assert (tmp_path / "out" / "PMC3532326.1" / f.name.replace(".xml", ".nxml")).read_bytes() == f.read_bytes()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["PMC3532326.1"]  # no staging left behind


@pytest.mark.parametrize("name", ["top/../../evil.txt", "/etc/evil.txt", "top/a/../../../evil.txt", "C:/evil.txt",
                                  "top\\..\\..\\evil.txt"])
def test_members_pointing_outside_are_refused(tmp_path, name):
    archive = _tar(tmp_path / "bad.tar.gz", [_file("top/ok.txt", b"ok"), _file(name, b"pwned")])
    with pytest.raises(ArticleError, match=r"bad\.tar\.gz: member .* points outside the package"):
        extract_package(archive, tmp_path / "out" / "article")
    assert not (tmp_path / "out" / "article").exists() and not list(tmp_path.rglob("evil.txt"))
    assert [p.name for p in (tmp_path / "out").iterdir()] == []


@pytest.mark.parametrize("kind, label", [(tarfile.SYMTYPE, "symlink"), (tarfile.LNKTYPE, "hard link"),
                                         (tarfile.CHRTYPE, "special file"), (tarfile.FIFOTYPE, "special file")])
def test_links_and_devices_are_refused(tmp_path, kind, label):
    archive = _tar(tmp_path / "bad.tar.gz", [_special("top/link", kind, "/etc/passwd"),
                                             _file("top/link", b"written through the link")])
    with pytest.raises(ArticleError, match=f"member 'top/link' is a {label}"):
        extract_package(archive, tmp_path / "out" / "article")
    assert not (tmp_path / "out" / "article").exists()


def test_size_and_count_limits_stop_bombs(tmp_path):
    zeros = b"\0" * 200_000  # compresses ~1000:1, like a bomb
    big = _tar(tmp_path / "big.tar.gz", [_file("top/a.bin", zeros)])
    assert big.stat().st_size < 2_000
    with pytest.raises(ArticleError, match="'top/a.bin' is 200000 bytes, over the 100000-byte limit"):
        extract_package(big, tmp_path / "o1", PackageLimits(max_member_bytes=100_000))
    many = _tar(tmp_path / "many.tar.gz", [_file(f"top/{i}.bin", zeros) for i in range(5)])
    with pytest.raises(ArticleError, match="unpacks to more than 500000 bytes"):
        extract_package(many, tmp_path / "o2", PackageLimits(max_total_bytes=500_000))
    with pytest.raises(ArticleError, match="more than 3 members"):
        extract_package(many, tmp_path / "o3", PackageLimits(max_members=3))
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))


def test_corrupt_truncated_and_empty_packages_are_article_errors(tmp_path):
    good = legacy_package(tmp_path).read_bytes()
    (tmp_path / "trunc.tar.gz").write_bytes(good[: len(good) // 2])
    (tmp_path / "noise.tar.gz").write_bytes(b"this is not a tarball at all" * 10)
    (tmp_path / "empty.tar.gz").write_bytes(gzip.compress(b"\0" * 1024))
    for name, message in [("trunc", "not a readable tar.gz package"), ("noise", "not a readable tar.gz package"),
                          ("empty", "the package holds no files")]:
        with pytest.raises(ArticleError, match=f"{name}.tar.gz: {message}"):
            extract_package(tmp_path / f"{name}.tar.gz", tmp_path / "out" / name)
        assert not (tmp_path / "out" / name).exists()


def test_a_rerun_replaces_the_previous_extraction(tmp_path):
    dest = tmp_path / "out" / "article"
    dest.mkdir(parents=True)
    (dest / "stale.txt").write_text("from an older version")
    extract_package(_tar(tmp_path / "p.tar.gz", [_file("top/new.txt", b"new")]), dest)
    assert sorted(p.name for p in dest.iterdir()) == ["new.txt"]


_names = st.text(alphabet=st.sampled_from("ab./\\:-_ \x00é"), min_size=0, max_size=24)


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600), cut=st.integers(0, 4000),
       members=st.lists(st.tuples(_names, st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
                                                            tarfile.LNKTYPE, tarfile.FIFOTYPE]),
                                  st.binary(max_size=64)), max_size=5))
def test_fuzzed_archives_raise_only_article_errors_and_never_escape(tmp_path, data, cut, members):
    work = tmp_path / "fuzz"
    work.mkdir(exist_ok=True)
    buf = io.BytesIO()
    try:
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, kind, payload in members:
                info = tarfile.TarInfo(name or "x")
                info.type = kind
                info.size = len(payload) if kind == tarfile.REGTYPE else 0
                tar.addfile(info, io.BytesIO(payload) if kind == tarfile.REGTYPE else None)
    except (ValueError, tarfile.TarError):
        pass  # tarfile itself refuses to write some names (NUL); the mangled bytes below still test us
    blob = buf.getvalue()
    blob = blob[:cut] + data if cut < len(blob) else blob + data
    (work / "p.tar.gz").write_bytes(blob)
    before = {p for p in tmp_path.rglob("*")}
    try:
        written = extract_package(work / "p.tar.gz", work / "out" / "article")
    except ArticleError:
        written = []
    outside = {p for p in tmp_path.rglob("*")} - before
    assert all(work / "out" in p.parents or p == work / "out" for p in outside), outside
    for rel in written:
        assert (work / "out" / "article" / rel).is_file()
