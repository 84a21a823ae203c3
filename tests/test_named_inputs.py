"""Inputs that params name reach DVC: digests that follow content only, and a stage that reruns on them."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from biomedclip_factory.digest import DigestCache, tree_digest
from biomedclip_factory.errors import DataError, ParamsError
from biomedclip_factory.net import free_port
from biomedclip_factory.named_inputs import (Listing, Mirror, check_named_paths, kept_when_absent, named_inputs, record,
                                             registry_weights)

from .conftest import UP_TO_DATE, copy_built, dvc, dvc_status, make_project, project_env, run_stage, tiny_model_dir

REPO = Path(__file__).resolve().parent.parent


def _tree(root: Path) -> Path:
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "x.bin").write_bytes(b"x" * 1000)
    (root / "a" / "y.txt").write_text("why")
    (root / "z.txt").write_text("zed")
    return _aged(root)


def _aged(root: Path) -> Path:
    """Every file's mtime a minute back: a file changed within the last tick is never cached (racy)."""
    past = time.time() - 60
    for file in [root] if root.is_file() else [f for f in root.rglob("*") if f.is_file()]:
        os.utime(file, (past, past))
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
    single = tree_digest(tmp_path / "one" / "z.txt", cache, "file")
    assert single["files"] == 1 and single["sha256"] != first["sha256"]


def test_digest_skips_what_tools_leave_and_follows_links_as_the_loaders_do(tmp_path: Path):
    cache = DigestCache()
    tree = _tree(tmp_path / "t")
    first = tree_digest(tree, cache, "t")
    (tree / ".cache" / "huggingface").mkdir(parents=True)  # `hf download` stamps the time in here
    (tree / ".cache" / "huggingface" / "x.metadata").write_text(str(time.time()))
    (tree / "__pycache__").mkdir()
    (tree / "__pycache__" / "m.pyc").write_bytes(b"\0")
    (tree / ".DS_Store").write_bytes(b"\0")
    assert tree_digest(tree, cache, "t") == first

    elsewhere = _tree(tmp_path / "elsewhere")
    (tree / "linked").symlink_to(elsewhere / "a", target_is_directory=True)  # a class folder linked in
    (tree / "loop").symlink_to(tree, target_is_directory=True)  # a link back up must not walk for ever
    linked = tree_digest(tree, cache, "t")
    assert linked["files"] == 5 and linked["sha256"] != first["sha256"]
    (elsewhere / "a" / "y.txt").write_text("whY")  # edited behind the link
    assert tree_digest(tree, cache, "t")["sha256"] != linked["sha256"]

    odd = tmp_path / "odd"
    odd.mkdir()
    with open(os.path.join(os.fsencode(odd), b"\xff-latin1.bin"), "wb") as fh:  # not UTF-8: still a name
        fh.write(b"1")
    assert tree_digest(odd, cache, "odd")["files"] == 1


def test_cache_skips_unchanged_files_and_survives_damage(tmp_path: Path):
    tree, cache_file = _tree(tmp_path / "t"), tmp_path / "cache.json"
    cache = DigestCache(cache_file)
    digest = tree_digest(tree, cache, "t")
    assert cache.hashed_bytes == 1006
    cache.save()
    again = DigestCache(cache_file)
    assert tree_digest(tree, again, "t") == digest and again.hashed_bytes == 0
    (tree / "a" / "y.txt").write_text("whY")  # rewritten in place, same size, its old mtime put back
    _aged(tree / "a" / "y.txt")  # (as `cp -p` or rsync -a over it would): the ctime still moved
    changed = tree_digest(tree, again, "t")
    assert again.hashed_bytes == 3 and changed["sha256"] != digest["sha256"]
    for damage in ("{not json", "[1, 2]", json.dumps({str((tree / "z.txt").resolve()): [1]})):
        cache_file.write_text(damage)
        damaged = DigestCache(cache_file)
        assert tree_digest(tree, damaged, "t") == changed and damaged.hashed_bytes == 1006


def test_a_file_changed_this_instant_is_not_cached(tmp_path: Path):
    fresh, cache_file = tmp_path / "fresh.txt", tmp_path / "cache.json"
    fresh.write_text("now")
    cache = DigestCache(cache_file)
    tree_digest(fresh, cache, "fresh")
    cache.save()
    assert json.loads(cache_file.read_text()) == {}  # it may change again within the same mtime tick


def test_cache_keeps_only_what_this_run_read(tmp_path: Path):
    cache_file = tmp_path / "cache.json"
    cache = DigestCache(cache_file)
    tree_digest(_tree(tmp_path / "old"), cache, "old")
    cache.save()
    cache = DigestCache(cache_file)
    tree_digest(tmp_path / "old" / "z.txt", cache, "z")
    cache.save()
    assert list(json.loads(cache_file.read_text())) == [str((tmp_path / "old" / "z.txt").resolve())]


def test_an_unreadable_file_is_named(tmp_path: Path, monkeypatch):
    tree = _tree(tmp_path / "t")
    (tree / "gone").symlink_to(tmp_path / "nowhere")  # a dangling link is no file: skipped
    real_open = Path.open

    def failing_open(self, *args, **kwargs):  # the disk, not the code under test, fails (root reads chmod 0)
        if self.name == "y.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", failing_open)
    with pytest.raises(DataError, match=r"evaluate.zeroshot.x.path: cannot read .*y.txt: .*Permission denied"):
        tree_digest(tree, DigestCache(), "evaluate.zeroshot.x.path")


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
    assert named["scrape"] == {"scrape.source": ("sample/pmc-mirror", Mirror(REPO / "sample/pmc-mirror"))}
    assert set(named["evaluate"]) == {
        "evaluate.zeroshot.chest_xray_pneumonia.path", "evaluate.zeroshot.brain_tumor_mri.path",
        "evaluate.zeroshot.pneumoniamnist.path", "evaluate.linear_probe.sets.pneumoniamnist.train",
        "evaluate.linear_probe.sets.pneumoniamnist.test", "evaluate.vqa.vqa_rad.images", "evaluate.vqa.vqa_rad.train",
        "evaluate.vqa.vqa_rad.test", "evaluate.vqa.vqa_rad.answers"}
    assert named["evaluate"]["evaluate.vqa.vqa_rad.images"][1] == REPO / "sample/vqa_rad/images"


def test_a_local_scrape_source_is_an_input_of_scrape_and_a_remote_one_is_not(tmp_path: Path):
    """New articles in a local mirror, or a pairs file's new lines or images, must rerun scrape under `dvc repro`;
    a bucket over HTTP cannot be digested (the retrain flow lists it on every run)."""
    (tmp_path / "mine" / "images").mkdir(parents=True)
    for name in ("a.jpg", "c.jpg"):
        (tmp_path / "mine" / "images" / name).write_bytes(name.encode())
    (tmp_path / "mine" / "unlisted.txt").write_text("not read by the scrape")
    jsonl = tmp_path / "mine" / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps({"image": f"images/{n}", "caption": "x"}) + "\n"
                             for n in ("a.jpg", "gone.jpg", "../../elsewhere.jpg", "c.jpg")))
    _aged(tmp_path / "mine")
    named = named_inputs(_params(tmp_path, scrape={"source": "mine/pairs.jsonl", "layout": "pairs"}), tmp_path)
    mine = (tmp_path / "mine").resolve()
    assert named["scrape"] == {"scrape.source": ("mine/pairs.jsonl", Listing(
        (mine / "pairs.jsonl", mine / "images/a.jpg", mine / "images/c.jpg")))}  # what a scrape can read
    digest = lambda: record(named["scrape"], DigestCache(), "sqlite://")["scrape.source"]  # noqa: E731
    before = digest()
    assert before["files"] == 3 and before["ref"] == "mine/pairs.jsonl"
    (tmp_path / "mine" / "unlisted.txt").write_text("changed")
    assert digest() == before
    (tmp_path / "mine" / "images" / "c.jpg").write_bytes(b"another image")
    assert digest()["sha256"] != before["sha256"]
    (tmp_path / "pmc mirror" / "PMC1.1").mkdir(parents=True)
    (tmp_path / "pmc mirror" / "PMC1.1" / "PMC1.1.xml").write_text("<article/>")
    url = (tmp_path / "pmc mirror").as_uri()  # file:///…/pmc%20mirror
    mirror = named_inputs(_params(tmp_path, scrape={"source": url, "layout": "cloud"}), tmp_path)
    assert mirror["scrape"] == {"scrape.source": (url, Mirror(tmp_path / "pmc mirror"))}
    listed = record(mirror["scrape"], DigestCache(), "sqlite://")
    (tmp_path / "pmc mirror" / "PMC1.1" / "PMC1.1.xml").write_text("<other/>!")  # a mirror is known by names, sizes
    assert record(mirror["scrape"], DigestCache(), "sqlite://")["scrape.source"]["listing_sha256"] != \
        listed["scrape.source"]["listing_sha256"]
    (tmp_path / "pmc mirror" / "PMC2.1").mkdir()
    (tmp_path / "pmc mirror" / "PMC2.1" / "PMC2.1.xml").write_text("<article/>")  # a new article version
    grown = record(mirror["scrape"], DigestCache(), "sqlite://")
    assert grown["scrape.source"]["files"] == 2

    # A clone that pulled the data to train has no mirror: its last record stands, and nothing fails.
    shutil.rmtree(tmp_path / "pmc mirror")
    check_named_paths(mirror, [])
    absent = record(mirror["scrape"], DigestCache(), "sqlite://")
    assert absent == {"scrape.source": {"ref": url, "missing": True}}
    assert kept_when_absent(absent, grown) == grown and kept_when_absent(absent, {}) == absent
    remote = named_inputs(_params(tmp_path, scrape={"source": "https://pmc-oa-opendata.s3.amazonaws.com"}), tmp_path)
    assert remote["scrape"] == {}


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


def test_a_registry_reference_records_the_weights_its_alias_names(tmp_path: Path):
    """By weights, not version number: the pipeline itself registers a new version of the same weights
    and moves ``challenger``; only other weights may rerun evaluate."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_registered_model("m")
    for weights in ("aaa.dir", "aaa.dir", "bbb.dir", None):
        tags = {"dvc_data": json.dumps({"models/clip": weights, "data/shards": "x.dir"})} if weights else {}
        client.create_model_version("m", source=str(tmp_path), tags=tags)
    names = {}
    for version in ("1", "2", "3", "4"):
        client.set_registered_model_alias("m", "champion", version)
        names[version] = registry_weights("models:/m@champion", uri)
    assert names == {"1": {"weights": "aaa.dir"}, "2": {"weights": "aaa.dir"}, "3": {"weights": "bbb.dir"},
                     "4": {"version": "4"}}  # registered elsewhere, without our tags: its number
    assert registry_weights("models:/m/3", uri) == {"weights": "bbb.dir"}
    assert registry_weights("models:/m@nobody", uri) == {"version": None}
    assert registry_weights("models:/absent@champion", uri) == {"version": None}


def test_a_registry_that_does_not_answer_leaves_the_version_unknown(monkeypatch):
    port = free_port()  # nothing listens on it
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # as the stage sets it
    assert registry_weights("models:/m@champion", f"http://127.0.0.1:{port}") == {"version": None}


def test_references_stay_as_params_wrote_them_and_other_models_are_inputs(tmp_path: Path):
    """A record must read alike in every checkout: ``../datasets/x`` stays that, not this machine's path."""
    root, outside = tmp_path / "project", _tree(tmp_path / "datasets" / "x")
    (root / "models").mkdir(parents=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["evaluate"].update(zeroshot={"x": {**params["evaluate"]["zeroshot"]["brain_tumor_mri"], "path": "../datasets/x"}},
                              linear_probe={"fractions": [1.0], "seeds": [0], "sets": {}}, vqa={},
                              models={"other": "local-dir:models/other",
                                      "hub": {"source": "local-dir:models/hub", "text_dir": "models/bert"},
                                      "prod": "models:/biomedclip-factory@champion"})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    named = named_inputs(root / "params.yaml", root)["evaluate"]
    assert named == {"evaluate.zeroshot.x.path": ("../datasets/x", root / "../datasets/x"),
                     "evaluate.models.other": ("local-dir:models/other", root / "models/other"),
                     "evaluate.models.hub": ("local-dir:models/hub", root / "models/hub"),
                     "evaluate.models.hub.text_dir": ("models/bert", root / "models/bert"),
                     "evaluate.models.prod": ("models:/biomedclip-factory@champion", "models:/biomedclip-factory@champion")}
    assert tree_digest(named["evaluate.zeroshot.x.path"][1], DigestCache(), "x") == tree_digest(outside, DigestCache(), "x")


def test_a_missing_start_or_self_written_input_fails_before_any_work(tmp_path: Path):
    root = tmp_path
    (root / "models" / "clip").mkdir(parents=True)
    (root / "models" / "clip" / "config.json").write_text("{}")
    named = {"tokenizer": {}, "pretrain": {"model.init_from": ("local-dir:models/clip", root / "models/clip")},
             "evaluate": {}}
    outputs = [root / "models/clip", root / "data/shards"]
    with pytest.raises(ParamsError, match="'model.init_from': local-dir:models/clip overlaps the pipeline's output"):
        check_named_paths(named, outputs)  # every run would rewrite what the next one starts from
    (root / "models" / "clip-224").symlink_to("clip")  # linked, not copied: the same dir
    named["pretrain"] = {"model.init_from": ("local-dir:models/clip-224", root / "models/clip-224")}
    with pytest.raises(ParamsError, match="overlaps the pipeline's output"):
        check_named_paths(named, outputs)
    (root / "data").mkdir()
    named["pretrain"] = {"model.init_from": ("local-dir:data", root / "data")}  # holds an output
    with pytest.raises(ParamsError, match="overlaps"):
        check_named_paths(named, outputs)
    named["pretrain"] = {"model.init_from": ("local-dir:models/clip-384", root / "models/clip-384")}
    with pytest.raises(ParamsError, match="'model.init_from': local-dir:models/clip-384 does not exist"):
        check_named_paths(named, outputs)

    # A missing evaluation set is evaluate's to report by name (the rest still score); its record says so.
    named = {"tokenizer": {}, "pretrain": {},
             "evaluate": {"evaluate.zeroshot.pcam.path": ("/data/zeroshot/pcam", root / "no" / "pcam"),
                          "evaluate.models.prod": ("models:/m@champion", "models:/m@champion")}}
    check_named_paths(named, outputs)
    assert record(named["evaluate"], DigestCache(), f"sqlite:///{root / 'mlflow.db'}") == {
        "evaluate.models.prod": {"ref": "models:/m@champion", "version": None},
        "evaluate.zeroshot.pcam.path": {"ref": "/data/zeroshot/pcam", "missing": True}}
    with pytest.raises(DataError, match="x: .*nowhere does not exist"):
        tree_digest(root / "nowhere", DigestCache(), "x")  # nothing hashes an absent path as empty


def test_the_stage_imports_no_torch():
    """It runs on every dvc repro: a torch import there would cost seconds each time."""
    import subprocess
    import sys

    probe = "import sys, stages.inputs; sys.exit('torch' in sys.modules or 'open_clip' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
    assert subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env).returncode == 0


@pytest.mark.slow
def test_the_stage_names_a_missing_input_and_exits_2(tmp_path: Path):
    project = make_project(tmp_path / "project", {"tokenizer": {"source": "models/clip-224"}})
    proc = run_stage(project, "inputs", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "'tokenizer.source'" in proc.stderr and "clip-224" in proc.stderr


def _changed(project: Path) -> dict:
    dvc(project, "repro", "inputs")
    return dvc_status(project)


@pytest.mark.slow
def test_dvc_reruns_the_stage_whose_named_input_changed_and_only_it(built_project: Path, tmp_path: Path):
    project = tmp_path / "project"
    copy_built(built_project, project)
    assert _changed(project) == UP_TO_DATE  # digested again: the same records
    image = next((project / "sample/labelled/chest_xray_pneumonia").rglob("*.jpg"))
    image.write_bytes(image.read_bytes() + b"\0")  # the zero-shot set params name was edited
    changed = _changed(project)
    assert set(changed) == {"inputs", "evaluate", "register"}, changed
    assert {"changed deps": {"data/inputs/evaluate.json": "modified"}} in changed["evaluate"]
    dvc(project, "commit", "--force")  # as if evaluated on it

    # New content in the local mirror scrape.source names: scrape reruns (and what follows, once it has).
    article = next(p for p in (project / "sample/pmc-mirror").iterdir() if p.is_dir())
    shutil.copytree(article, project / "sample/pmc-mirror" / f"{article.name}0")
    changed = _changed(project)
    assert set(changed) == {"inputs", "scrape", "register"}, changed
    assert {"changed deps": {"data/inputs/scrape.json": "modified"}} in changed["scrape"]
    shutil.rmtree(project / "sample/pmc-mirror" / f"{article.name}0")
    assert _changed(project) == UP_TO_DATE
    shutil.move(project / "sample/pmc-mirror", tmp_path / "away")  # a clone that pulled the data has no mirror
    assert _changed(project) == UP_TO_DATE

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
    assert set(changed) == {"inputs", "pretrain", "register"}, changed
    assert {"changed deps": {"data/inputs/pretrain.json": "modified"}} in changed["pretrain"]
    dvc(project, "commit", "--force")

    # Library upgrades (a newer ImageHash and lxml installed ahead of these) rerun align, which decodes with
    # both, and no stage that imports neither; scrape's source is not on this machine, so its record stands.
    upgraded = tmp_path / "upgraded"
    for name in ("ImageHash", "lxml"):
        (upgraded / f"{name}-99.0.dist-info").mkdir(parents=True)
        (upgraded / f"{name}-99.0.dist-info" / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: 99.0+cu128\n")
    env = project_env(project)
    env["PYTHONPATH"] += f"{os.pathsep}{upgraded}"
    dvc(project, "repro", "inputs", env=env)
    changed = dvc_status(project, env)
    assert set(changed) == {"inputs", "align", "register"}, changed
    assert {"changed deps": {"data/inputs/align.json": "modified"}} in changed["align"]
    assert json.loads((project / "data/inputs/align.json").read_text())["libraries"]["imagehash"] == "99.0"
