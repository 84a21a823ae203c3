"""A user's own image–caption JSONL through scrape and align, like PMC articles."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from biomedclip_factory.errors import SourceError
from biomedclip_factory.pmc.local_pairs import LocalPairsSource, read_pairs
from biomedclip_factory.pmc.metadata import SelectionPolicy
from biomedclip_factory.pmc.scrape import scrape

from .conftest import make_project, run_stage

CAPTIONS = ["Axial CT shows an obstructing mass with collapse of the left upper lobe.",
            "Coronal MR: enlarged prostate with calcifications <and> no dominant mass.",
            "Sagittal T2 image of the lumbar spine with a disc herniation at L4-L5.",
            "Chest radiograph with a right lower lobe consolidation & effusion.",
            "Ultrasound of the gallbladder showing multiple shadowing stones."]


def pairs_file(root: Path, missing: bool = False) -> Path:
    rng = random.Random(0)
    (root / "img").mkdir(parents=True)
    lines = []
    for i, caption in enumerate(CAPTIONS):
        image = Image.frombytes("L", (96, 96), bytes(rng.getrandbits(8) for _ in range(96 * 96))).convert("RGB")
        image.save(root / "img" / f"{i}.png")
        name = "img/none.png" if missing and i == 4 else f"img/{i}.png"
        lines.append(json.dumps({"image": name, "caption": caption, "case": "A" if i < 3 else "B"}))
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return root / "pairs.jsonl"


def test_pairs_become_articles_grouped_by_a_field(tmp_path):
    source = LocalPairsSource(pairs_file(tmp_path / "data", missing=True), "CC BY", group_by="case")
    result = scrape(source, tmp_path / "raw", SelectionPolicy.named("commercial"), progress=False)
    rows = {r["group"]: r for r in result.lines()}
    assert rows["A"]["status"] == "ok" and len(rows["A"]["files"]) == 4  # 3 images and the JATS of their captions
    metadata = [f.read_text() for f in (tmp_path / "raw").rglob("*.json") if f.name.startswith("LOCAL")]
    assert metadata and not any(str(tmp_path) in m for m in metadata)  # a DVC output, hashed alike in any checkout
    assert rows["B"]["status"] == "failed" and "img/none.png" in rows["B"]["error"] and "pairs.jsonl:5" in rows["B"]["error"]
    excluded = scrape(source, tmp_path / "raw2", SelectionPolicy.named(["CC0"]), progress=False)
    assert {r["status"] for r in excluded.lines()} == {"skipped:licence_excluded:CC BY"}


def test_bad_pairs_files_are_clear_errors(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"image": "a.png", "caption": "x"}\n{"image": 3}\n')
    with pytest.raises(SourceError, match=r"p.jsonl:2: each line needs string 'image' and 'caption'"):
        read_pairs(tmp_path / "p.jsonl", None)
    (tmp_path / "q.jsonl").write_text("not json\n")
    with pytest.raises(SourceError, match=r"q.jsonl:1: not JSON"):
        read_pairs(tmp_path / "q.jsonl", None)


@pytest.mark.slow  # runs stages or DeepSpeed in subprocesses: out of the edit-test loop
def test_the_stages_turn_a_pairs_file_into_pairs(tmp_path):
    data = pairs_file(tmp_path / "mine")
    project = make_project(tmp_path / "p", {"scrape": {"source": str(data), "layout": "pairs", "pairs_group_by": None}})
    run_stage(project, "scrape")
    run_stage(project, "align")
    pairs = pd.read_parquet(project / "data/pairs/pairs.parquet")
    assert sorted(pairs["caption"]) == sorted(CAPTIONS)  # markup-like characters survive the JATS round trip
    assert set(pairs["license_code"]) == {"CC BY"} and set(pairs["split"]) <= {"train", "test"}
    assert all((project / "data/pairs" / image).is_file() for image in pairs["image"])
    edited = data.read_text().replace("multiple shadowing stones", "a single large stone")
    data.write_text(edited)  # the user fixes a caption: align's journal must not hand back the old one
    run_stage(project, "scrape")
    run_stage(project, "align")
    pairs = pd.read_parquet(project / "data/pairs/pairs.parquet")
    assert sorted(pairs["caption"]) == sorted(c.replace("multiple shadowing stones", "a single large stone")
                                              for c in CAPTIONS)
    assert json.loads((project / "metrics/align.json").read_text())["articles_reused"] == len(CAPTIONS) - 1


def test_pairs_may_only_name_regular_image_files_under_their_folder(tmp_path):
    """No `../../etc/passwd`, absolute paths, links out of the folder, devices or giant files."""
    root = tmp_path / "data"
    pairs = pairs_file(root)
    outside = tmp_path / "secret.png"
    Image.new("RGB", (80, 80)).save(outside)
    (root / "img" / "link.png").symlink_to(outside)
    (root / "img" / "big.png").write_bytes(b"\0")
    os.truncate(root / "img" / "big.png", 300 * 2**20)  # sparse: 300 MB on paper, nothing on disk
    bad = {"../secret.png": "outside", str(outside): "outside", "img/link.png": "outside",
           "/dev/zero": "outside", "img": "not a regular file", "img/big.png": "over the 268435456-byte limit"}
    pairs.write_text(pairs.read_text() + "".join(json.dumps({"image": image, "caption": f"case {i}"}) + "\n"
                                                 for i, image in enumerate(bad)))
    result = scrape(LocalPairsSource(pairs, "CC BY"), tmp_path / "raw", SelectionPolicy.named("commercial"),
                    progress=False)
    errors = {row["error"].split("image ")[1].split(":")[0].strip("'"): row["error"] for row in result.lines()
              if row["status"] == "failed"}
    assert errors.keys() == bad.keys()
    for image, reason in bad.items():
        assert reason in errors[image] and "pairs.jsonl:" in errors[image], errors[image]
        assert str(root) not in errors[image].replace(str(outside), ""), errors[image]  # data/raw alike in any clone
    assert sum(row["status"] == "ok" for row in result.lines()) == len(CAPTIONS)  # the good pairs still come through
    assert not any(f.read_bytes() == outside.read_bytes() for f in (tmp_path / "raw").rglob("*.png"))
