"""Inputs that params name reach DVC: digests that follow content only, and a stage that reruns on them."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from biomedclip_factory.digest import DigestCache, tree_digest
from biomedclip_factory.named_inputs import named_inputs, record, registry_version

from .conftest import UP_TO_DATE, dvc, dvc_status, tiny_model_dir

REPO = Path(__file__).resolve().parent.parent


def _tree(root: Path) -> Path:
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "x.bin").write_bytes(b"x" * 1000)
    (root / "a" / "y.txt").write_text("why")
    (root / "z.txt").write_text("zed")
    return root


def test_digest_follows_content_and_names_not_place_or_time(tmp_path: Path):
    cache = DigestCache(tmp_path / "cache.json")
    first = tree_digest(_tree(tmp_path / "one"), cache, "one")
    moved = shutil.copytree(tmp_path / "one", tmp_path / "two")  # new place, new mtimes and inodes
    os.utime(moved / "z.txt", (0, 0))
    assert tree_digest(moved, cache, "two") == first == {"sha256": first["sha256"], "files": 3, "bytes": 1006}
    (moved / "z.txt").write_text("zee")  # same size, other content
    assert tree_digest(moved, cache, "two")["sha256"] != first["sha256"]
    (moved / "z.txt").write_text("zed")
    (moved / "z.txt").rename(moved / "w.txt")  # same bytes under another name
    assert tree_digest(moved, cache, "two")["sha256"] != first["sha256"]
    assert tree_digest(tmp_path / "absent", cache, "absent") == {"missing": True}
    single = tree_digest(tmp_path / "one" / "z.txt", cache, "file")
    assert single["files"] == 1 and single["sha256"] != first["sha256"]


def test_cache_skips_unchanged_files_and_survives_damage(tmp_path: Path):
    tree, cache_file = _tree(tmp_path / "t"), tmp_path / "cache.json"
    cache = DigestCache(cache_file)
    digest = tree_digest(tree, cache, "t")
    assert cache.hashed_bytes == 1006
    cache.save()
    again = DigestCache(cache_file)
    assert tree_digest(tree, again, "t") == digest and again.hashed_bytes == 0
    (tree / "a" / "y.txt").write_text("whY!")  # a changed file is hashed again, and only it
    changed = tree_digest(tree, again, "t")
    assert again.hashed_bytes == 4 and changed["sha256"] != digest["sha256"]
    cache_file.write_text("{not json")
    damaged = DigestCache(cache_file)
    assert tree_digest(tree, damaged, "t") == changed and damaged.hashed_bytes == 1007


def test_cache_keeps_only_what_this_run_read(tmp_path: Path):
    cache_file = tmp_path / "cache.json"
    cache = DigestCache(cache_file)
    tree_digest(_tree(tmp_path / "old"), cache, "old")
    cache.save()
    cache = DigestCache(cache_file)
    tree_digest(tmp_path / "old" / "z.txt", cache, "z")
    cache.save()
    assert list(json.loads(cache_file.read_text())) == [str((tmp_path / "old" / "z.txt").resolve())]


def _params(tmp_path: Path, **sections: dict) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, values in sections.items():
        params[name].update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_every_path_params_name_is_found_by_its_key():
    named = named_inputs(REPO / "params.yaml", REPO)
    assert named["tokenizer"] == {} and named["pretrain"] == {}  # the default trains its vocabulary, from scratch
    assert set(named["evaluate"]) == {
        "evaluate.zeroshot.chest_xray_pneumonia.path", "evaluate.zeroshot.brain_tumor_mri.path",
        "evaluate.zeroshot.pneumoniamnist.path", "evaluate.linear_probe.sets.pneumoniamnist.train",
        "evaluate.linear_probe.sets.pneumoniamnist.test", "evaluate.vqa.vqa_rad.images", "evaluate.vqa.vqa_rad.train",
        "evaluate.vqa.vqa_rad.test", "evaluate.vqa.vqa_rad.answers"}
    assert named["evaluate"]["evaluate.vqa.vqa_rad.images"][1] == REPO / "sample/vqa_rad/images"


def test_a_starting_model_and_tokenizer_dir_are_inputs_of_their_stages(tmp_path: Path):
    """The 384-px phase's setting: pretrain starts from, and the tokenizer copies, the 224-px model."""
    start = shutil.copytree(tiny_model_dir(tmp_path / "built"), tmp_path / "models" / "clip-224")
    params = _params(tmp_path, tokenizer={"source": "models/clip-224"},
                     model={"init_from": "local-dir:models/clip-224"})
    named = named_inputs(params, tmp_path)
    assert named["tokenizer"] == {"tokenizer.source": ("models/clip-224", start)}
    assert named["pretrain"] == {"model.init_from": ("local-dir:models/clip-224", start)}
    before = record(named["pretrain"], DigestCache(tmp_path / "c.json"), "sqlite://")
    weights = next(start.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\1")  # other weights, same size
    after = record(named["pretrain"], DigestCache(tmp_path / "c.json"), "sqlite://")
    assert before["model.init_from"]["ref"] == "local-dir:models/clip-224"
    assert before["model.init_from"]["sha256"] != after["model.init_from"]["sha256"]


def test_a_registry_reference_records_the_version_its_alias_names(tmp_path: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", source=str(tmp_path))
    client.set_registered_model_alias("m", "champion", "1")
    assert registry_version("models:/m@champion", uri) == {"version": "1"}
    client.set_registered_model_alias("m", "champion", "2")  # promoted: evaluate must score the new one
    assert registry_version("models:/m@champion", uri) == {"version": "2"}
    assert registry_version("models:/m/1", uri) == {"version": "1"}
    assert registry_version("models:/m@nobody", uri) == {"version": None}
    assert registry_version("models:/absent@champion", uri) == {"version": None}


def _changed(project: Path) -> dict:
    dvc(project, "repro", "inputs")
    return dvc_status(project)


@pytest.mark.slow
def test_dvc_reruns_the_stage_whose_named_input_changed_and_only_it(built_project: Path, tmp_path: Path):
    project = tmp_path / "project"
    shutil.copytree(built_project, project, symlinks=True)
    assert _changed(project) == UP_TO_DATE  # digested again: the same records
    image = next((project / "sample/labelled/chest_xray_pneumonia").rglob("*.jpg"))
    image.write_bytes(image.read_bytes() + b"\0")  # the zero-shot set params name was edited
    changed = _changed(project)
    assert set(changed) == {"inputs", "evaluate"}, changed
    assert {"changed deps": {"data/inputs/evaluate.json": "modified"}} in changed["evaluate"]

    # Continued pretraining from a model dir params name: new weights there retrain, nothing else does.
    shutil.copytree(project / "models/clip", project / "models/start")
    with (project / "params.yaml").open() as fh:
        params = yaml.safe_load(fh)
    params["model"]["init_from"] = "local-dir:models/start"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(project, "repro", "inputs")
    dvc(project, "commit", "--force")  # as if trained from it: the lock now names this start
    assert _changed(project) == UP_TO_DATE
    weights = project / "models/start/open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\1")
    changed = _changed(project)
    assert set(changed) == {"inputs", "pretrain"}, changed
    assert {"changed deps": {"data/inputs/pretrain.json": "modified"}} in changed["pretrain"]
