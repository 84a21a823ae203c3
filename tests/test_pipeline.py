"""The users' doors, for real: `dvc repro` end to end, the model dir, the registry, the Prefect flow."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from PIL import Image

from .conftest import UP_TO_DATE, copy_built, dvc, dvc_status, project_env, run_stage, stage_command

pytestmark = pytest.mark.slow


def test_dvc_repro_builds_every_output(built_project: Path):
    p = built_project
    log = (p / "repro.log").read_text()
    for stage in ("scrape", "align", "shard", "tokenizer", "pretrain", "evaluate", "register"):
        assert f"{stage}: " in log and "in, " in log  # each stage printed its summary line
    assert json.loads((p / "metrics/align.json").read_text())["pairs"] == 10
    assert json.loads((p / "metrics/shard.json").read_text())["train_samples"] == 8
    train = json.loads((p / "metrics/pretrain.json").read_text())
    assert train["steps"] == 150 and 0 < train["final_loss"] < 2.0794  # below ln(8): the batch's chance loss
    assert train["tokens_per_s"] > train["samples_per_s"] > 0
    report = json.loads((p / "metrics/eval.json").read_text())["models"]["ours"]
    assert report["retrieval"]["test"]["gallery_size"] == 2
    assert report["zeroshot"]["chest_xray_pneumonia"]["images"] == 50
    assert (p / "plots/confusion/chest_xray_pneumonia.csv").read_text().count("\n") == 51
    assert "| zero-shot chest_xray_pneumonia auroc (50 images) |" in (p / "metrics/eval.md").read_text()
    registered = json.loads((p / "metrics/register.json").read_text())
    assert registered["version"] == 1 and registered["promoted"] == 1  # the first version becomes champion
    assert (p / "dvc.lock").is_file() and (p / "plots/pretrain_loss.csv").read_text().startswith("step,loss\n10,")


def test_dvc_repro_again_is_a_no_op(built_project: Path, tmp_path: Path):
    project = copy_built(built_project, tmp_path / "project")  # dvc writes its own state in a repo it looks at
    assert dvc_status(project) == UP_TO_DATE


def test_run_state_absent_as_after_dvc_pull_changes_nothing(built_project: Path, tmp_path: Path):
    """A teammate's clone has the outs (`dvc pull`) but not the resume state; nothing must rerun."""
    project = tmp_path / "project"
    copy_built(built_project, project)
    shutil.rmtree(project / "data" / "align_journal")
    shutil.rmtree(project / "models" / "checkpoints")
    assert dvc_status(project) == UP_TO_DATE


def test_dvc_repro_registers_in_a_registry_that_lacks_the_model(built_project: Path, tmp_path: Path):
    """The registry is outside what DVC hashes: a fresh clone's empty one (after `dvc pull`) must get the
    model from `dvc repro`, though dvc.lock says every stage is done; nothing else reruns."""
    project = copy_built(built_project, tmp_path / "project")
    (project / "mlflow.db").unlink()
    shutil.rmtree(project / "mlartifacts")
    log = dvc(project, "repro").stdout
    assert "Running stage 'register'" in log, log[-3000:]
    reran = [s for s in ("scrape", "align", "shard", "tokenizer", "pretrain", "evaluate") if f"Running stage '{s}'" in log]
    assert not reran, log[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("biomedclip-factory", "champion")
    assert str(champion.version) == "1"
    assert json.loads((project / "metrics/register.json").read_text())["version"] == 1


def test_a_gate_on_a_zero_shot_set_scores_the_champion_again_under_new_prompts(built_project: Path, tmp_path: Path):
    """The gate on a zero-shot score: after the set's prompts change, the champion's recorded score (from the
    old prompts) is not compared; register scores the champion under the new ones, as evaluate scored the
    candidate. The same weights then score the same, a tie that keeps the champion."""
    project = copy_built(built_project, tmp_path / "project")
    params = yaml.safe_load((project / "params.yaml").read_text())
    metric = "zeroshot.chest_xray_pneumonia.score"
    params["register"]["gate_metric"] = metric
    params["evaluate"]["zeroshot"] = {"chest_xray_pneumonia": {**params["evaluate"]["zeroshot"]["chest_xray_pneumonia"],
                                                               "templates": ["a chest x-ray showing {}"]}}
    params["evaluate"].update(retrieval_splits=[], vqa={})  # the gate's set alone: evaluate in seconds
    params["evaluate"]["linear_probe"]["sets"] = {}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("evaluate", "register"):
        run_stage(project, stage)
    score = json.loads((project / "metrics/eval.json").read_text())["models"]["ours"]["zeroshot"][
        "chest_xray_pneumonia"]["score"]
    registered = json.loads((project / "metrics/register.json").read_text())
    assert registered["version"] == 2 and not registered["promoted"], registered
    reason = registered["promotion_reason"]
    assert f"{metric} {score:.4f} ≤ champion v1 {score:.4f} (re-scored on this run's 'chest_xray_pneumonia' " \
           "data and settings)" in reason, reason


LOAD_MODEL_DIR = """
import sys, open_clip, torch
from PIL import Image
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + sys.argv[1])
tokenizer = open_clip.get_tokenizer("local-dir:" + sys.argv[1])
model.eval()
with torch.no_grad():
    image = model.encode_image(preprocess(Image.open(sys.argv[2])).unsqueeze(0), normalize=True)
    text = model.encode_text(tokenizer(["genome variant analysis workflow"]), normalize=True)
print(float((image @ text.T)[0, 0]))
"""


def test_model_dir_is_the_same_in_every_clone_and_loads_in_plain_open_clip(built_project: Path, tmp_path: Path):
    """The dir names its text tower relative to the project, so another clone (or a `dvc pull` elsewhere)
    holds the same bytes under the same DVC hash, and plain open_clip loads it from that clone's root;
    ``relocate`` with an absolute path makes a copy load from any working directory."""
    from biomedclip_factory.model.build import relocate

    config = json.loads((built_project / "models/clip/open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
    assert config["hf_model_name"] == config["hf_tokenizer_name"] == "models/clip"
    image = next((built_project / "data/pairs/images").glob("*.jpg"))
    clone = tmp_path / "clone"
    shutil.copytree(built_project / "models", clone / "models")  # and no other clone's dir to fall back on
    from_root = subprocess.run([sys.executable, "-c", LOAD_MODEL_DIR, "models/clip", str(image)], cwd=clone,
                               capture_output=True, text=True)
    assert from_root.returncode == 0, from_root.stderr[-3000:]
    copy = tmp_path / "elsewhere"
    shutil.copytree(clone / "models/clip", copy)
    relocate(copy.resolve())
    from_anywhere = subprocess.run([sys.executable, "-c", LOAD_MODEL_DIR, str(copy.resolve()), str(image)],
                                   cwd=tmp_path, capture_output=True, text=True)
    assert from_anywhere.returncode == 0, from_anywhere.stderr[-3000:]
    from biomedclip_factory.evaluate.embed import Encoder

    ours = Encoder.load(built_project / "models/clip")  # the trained weights, as the factory reads them
    expected = float(ours.embed_images([Image.open(image)]) @ ours.embed_texts(["genome variant analysis workflow"]).T)
    for proc in (from_root, from_anywhere):
        assert "Model initialized randomly" not in proc.stderr
        assert float(proc.stdout.strip().splitlines()[-1]) == pytest.approx(expected, abs=1e-5)


PULL_FROM_REGISTRY = """
import base64, json, os, sys
# As on a machine with no checkout: the project's venv has the package installed in editable mode
sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "biomedclip_factory"))]
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model("models:/biomedclip-factory@champion")
import biomedclip_factory
image = base64.b64encode(open(sys.argv[1], "rb").read()).decode()
out = model.predict(pd.DataFrame({"image": [image]}),
                    params={"candidate_labels": ["a genome variant workflow", "a chest x-ray"]})
probs = out["probabilities"][0]
emb = model.predict(pd.DataFrame({"text": ["a chest x-ray"]}))["text_embedding"][0]
print(json.dumps({"n": len(probs), "total": sum(probs), "label": out["label"][0], "dim": len(emb),
                  "code": biomedclip_factory.__file__}))
"""


def test_registered_model_loads_in_a_fresh_process(built_project: Path, tmp_path: Path):
    import hashlib

    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{built_project / 'mlflow.db'}"
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("biomedclip-factory", "challenger")
    tags = version.tags
    assert {"git_commit", "training_run_id", "licence_mix", "eval_metrics", "dvc_lock_sha256"} <= set(tags)
    # the version is the register run's logged model, tags set with it; the training run records the batch it ran
    assert version.source.startswith("models:/m-") and client.get_run(version.run_id).info.run_name == "register"
    trained = client.get_run(tags["training_run_id"]).data.params
    assert [trained[f"pretrain.{k}"] for k in ("world_size", "gradient_accumulation_steps", "global_batch")] == ["1", "1", "8"]
    assert len(tags["git_commit"]) == 40 and tags["git_dirty"] in ("true", "false")
    lineage = Path(mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="lineage",
                                                       tracking_uri=uri, dst_path=str(tmp_path / "lineage")))
    assert (lineage / "params.yaml").read_bytes() == (built_project / "params.yaml").read_bytes()
    assert hashlib.sha256((lineage / "dvc.lock").read_bytes()).hexdigest() == tags["dvc_lock_sha256"]
    assert json.loads(tags["licence_mix"]) == {"CC BY": 8}
    assert set(json.loads(tags["dvc_data"])) >= {"data/raw", "data/pairs", "data/shards", "models/tokenizer"}
    image = next((built_project / "data/pairs/images").glob("PMC3532326*.jpg"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.run([sys.executable, "-c", PULL_FROM_REGISTRY, str(image)], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n"] == 2 and out["total"] == pytest.approx(1.0) and out["dim"] == 128
    assert out["label"] in ("a genome variant workflow", "a chest x-ray")
    assert Path(out["code"]).parent.parent.name == "code", out["code"]  # the model's own copy of the package


def test_open_clip_trainer_reads_our_shards_and_model_unchanged(built_project: Path, tmp_path: Path):
    """open_clip's own trainer, on our train shards (sizes.json gives it the sample count), run from the
    project root as a user there would (the model dir names its text tower relative to it)."""
    proc = subprocess.run(
        [sys.executable, "-m", "open_clip_train.main", "--dataset-type", "webdataset",
         "--train-data", "data/shards/train/train-000000.tar",
         "--model", "local-dir:models/clip", "--batch-size", "4", "--epochs", "1",
         "--workers", "0", "--device", "cpu", "--logs", str(tmp_path), "--name", "interop",
         "--save-frequency", "0", "--warmup", "1", "--lr", "1e-4", "--seed", "0"],
        cwd=built_project, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    log = (tmp_path / "interop" / "out.log").read_text()
    assert "[8/8 (100%)]" in log and "Contrastive_loss" in log


def test_mlflow_models_serve_answers_requests_and_survives_a_bounded_load_with_attacks(built_project: Path,
                                                                                     tmp_path: Path):
    import base64

    import requests

    from benchmarks.serve_load import RssWatch, bomb_png, load, serve

    server, url = serve("models:/biomedclip-factory@champion", f"sqlite:///{built_project / 'mlflow.db'}", tmp_path,
                        tmp_path / "server.log")
    try:
        image = next((built_project / "data/pairs/images").glob("*.jpg"))
        image_b64 = base64.b64encode(image.read_bytes()).decode()
        labels = ["a genome variant workflow", "a chest x-ray", "a bar chart"]
        body = {"dataframe_split": {"columns": ["image"], "data": [[image_b64]]}, "params": {"candidate_labels": labels}}
        resp = requests.post(f"{url}/invocations", json=body, timeout=60)
        bomb = bomb_png()
        attacks = {name: requests.post(f"{url}/invocations", timeout=60, json={
            "dataframe_split": {"columns": ["image"], "data": [[value]] * 5}}) for name, value in
            (("bomb", bomb), ("path", str(image)), ("missing", "/nowhere.png"))}
        idle = RssWatch(server.pid).high_water()  # after the first requests: model loaded, allocator warm
        with RssWatch(server.pid) as rss:  # 16 clients, 96 requests, a quarter of them attacks
            loaded = load(url, image_b64, {"bomb": bomb, "path": str(image)}, 16, 96, 4, labels)
        again = requests.post(f"{url}/invocations", json=body, timeout=60)
        alive, high_water = server.poll() is None, rss.high_water()
    finally:
        server.terminate()
        server.wait(timeout=60)
    output = (tmp_path / "server.log").read_text(errors="replace")
    assert resp.status_code == 200 and again.status_code == 200 and alive, output[-3000:]
    for name, answer in attacks.items():
        assert answer.status_code == 400, (name, answer.text[-500:])
        assert "stack_trace" not in answer.json() and "Traceback" not in answer.text, name
    assert "exceeds the limit" in attacks["bomb"].json()["message"]
    assert attacks["path"].json()["message"].split("Error: ")[-1] == \
        attacks["missing"].json()["message"].split("Error: ")[-1]  # no oracle for which server files exist
    prediction = resp.json()["predictions"][0]
    assert len(prediction["probabilities"]) == 3 and abs(sum(prediction["probabilities"]) - 1) < 1e-5
    assert prediction["label"] in body["params"]["candidate_labels"]
    assert loaded.statuses == {"valid:200": 72, "bomb:400": 12, "path:400": 12}, loaded.statuses
    assert high_water < idle + 2**30, (idle, high_water)  # one decoded bomb alone would take 1.3 GB
    print(f"served under load: p50 {loaded.percentile(0.5):.0f} ms, p99 {loaded.percentile(0.99):.0f} ms, "
          f"peak RSS {high_water / 2**20:.0f} MB (after warm-up {idle / 2**20:.0f} MB)")


def test_dvc_experiment_and_plots(built_project: Path, tmp_path: Path):
    """`dvc exp run -S` on the defaults, then `dvc plots show` renders the loss and eval plots."""
    project = tmp_path / "p"
    copy_built(built_project, project)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": f"{project / 'src'}{os.pathsep}{project}"}
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "built"],
                   cwd=project, check=True)
    exp = subprocess.run([*dvc, "exp", "run", "-S", "evaluate.retrieval_splits=[test]", "--name", "test-only"],
                         cwd=project, env=env, capture_output=True, text=True)
    assert exp.returncode == 0, exp.stdout[-2000:] + exp.stderr[-3000:]
    assert "Running stage 'evaluate'" in exp.stdout and "Running stage 'pretrain'" not in exp.stdout
    shown = subprocess.run([*dvc, "exp", "show", "--json"], cwd=project, env=env, capture_output=True, text=True,
                           check=True)
    assert "test-only" in shown.stdout
    plots = subprocess.run([*dvc, "plots", "show", "-o", str(tmp_path / "plots")], cwd=project, env=env,
                           capture_output=True, text=True)
    assert plots.returncode == 0, plots.stderr[-3000:]
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "pretrain_loss.csv" in html and "confusion" in html


def test_trained_sample_model_retrieves_its_train_pairs_above_chance(built_project: Path):
    """A sanity check that the chain is wired right: 150 steps on 8 pairs must beat chance."""
    train = json.loads((built_project / "metrics/eval.json").read_text())["models"]["ours"]["retrieval"]["train"]
    assert train["gallery_size"] == 8
    # Averaged over both directions and R@1/R@5: one lucky or unlucky query of 8 does not decide it
    # (a collapsed, untrained model scores exactly chance here because ties count against it).
    lift = [train[d][k] - train["chance"][d][k] for d in ("image_to_text", "text_to_image") for k in ("R@1", "R@5")]
    assert sum(lift) / len(lift) > 0.05, train


def test_pretrain_stage_killed_then_rerun_keeps_the_whole_loss_curve(built_project: Path, tmp_path: Path):
    """kill -9 past the step-50 checkpoint, rerun: resumes there, same curve and model as unbroken."""
    project = tmp_path / "project"
    copy_built(built_project, project)
    shutil.rmtree(project / "models" / "checkpoints")
    proc = subprocess.Popen(stage_command(project, "pretrain"), cwd=project, env=project_env(project),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = project / "models" / "checkpoints" / "loss.jsonl"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if log.is_file() and len(log.read_text().splitlines()) >= 7:  # step 70 logged, checkpoint at 50
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert (project / "models" / "checkpoints" / "latest").read_text() in ("step50", "step100"), "killed too late"
    killed_run = (project / "models" / "checkpoints" / "mlflow_run").read_text()
    run_stage(project, "pretrain")
    metrics = json.loads((project / "metrics" / "pretrain.json").read_text())
    assert metrics["resumed_from"] in (50, 100)
    assert metrics["mlflow_run_id"] == killed_run  # one MLflow run holds the whole curve
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    assert client.get_run(killed_run).info.status == "FINISHED"
    logged = {m.step for m in client.get_metric_history(killed_run, "loss")}
    assert {10, 150} <= logged, sorted(logged)  # from before the kill and from the resumed execution
    for output in ("plots/pretrain_loss.csv", "models/clip/open_clip_model.safetensors"):
        assert (project / output).read_bytes() == (built_project / output).read_bytes(), output


def test_align_stage_rerun_reuses_its_journal_and_resumes_a_cut_one(built_project: Path, tmp_path: Path):
    """`dvc repro -f` keeps the align journal (a persisted out): nothing is decoded again; with the
    journal cut as a kill -9 leaves it (half a line), the rerun aligns only the rest. Same pairs."""
    project = tmp_path / "project"
    copy_built(built_project, project)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": f"{project / 'src'}{os.pathsep}{project}"}
    built = (built_project / "data/pairs/pairs.parquet").read_bytes()
    articles = json.loads((built_project / "metrics/align.json").read_text())["articles"]
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "-f", "-s", "align"], cwd=project, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"{articles} of {articles} article versions reused" in proc.stdout
    assert json.loads((project / "metrics/align.json").read_text())["articles_reused"] == articles
    assert (project / "data/pairs/pairs.parquet").read_bytes() == built
    (journal,) = (project / "data/align_journal").glob("*/journal.jsonl")
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:5]) + lines[5][:40])
    run_stage(project, "align")
    assert json.loads((project / "metrics/align.json").read_text())["articles_reused"] == 5
    assert (project / "data/pairs/pairs.parquet").read_bytes() == built
    images = sorted(p.name for p in (project / "data/pairs/images").iterdir())
    assert images == sorted(p.name for p in (built_project / "data/pairs/images").iterdir())
    for name in images:
        assert (project / "data/pairs/images" / name).read_bytes() == (built_project / "data/pairs/images" / name).read_bytes()


def _tree_digest(root: Path, names: tuple[str, ...]) -> dict[str, str]:
    import hashlib

    files = [f for name in names for f in ([root / name] if (root / name).is_file() else sorted((root / name).rglob("*")))]
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


@pytest.mark.parametrize("stage,bad", [
    ("tokenizer", {"tokenizer": {"source": "no/such/bert"}}),
    ("pretrain", {"model": {"vision": {"timm_model_name": "no_such_vit"}}}),
    ("align", {"align": {"split": {"ratios": {"train": "x"}}}}),
    ("evaluate", {"evaluate": {"zeroshot": {"chest_xray_pneumonia": {"metric": "f1"}}}}),
])
def test_a_failed_stage_leaves_the_last_good_outputs_as_they_were(built_project: Path, tmp_path: Path, stage, bad):
    """DESIGN's contract: validate first, build beside the output, swap it in last."""
    from .conftest import _merge

    project = tmp_path / "p"
    copy_built(built_project, project)
    outputs = ("data/pairs", "data/shards", "models/tokenizer", "models/clip", "metrics")
    before = _tree_digest(project, outputs)
    params = yaml.safe_load((project / "params.yaml").read_text())
    (project / "params.yaml").write_text(yaml.safe_dump(_merge(params, bad), sort_keys=False))
    proc = run_stage(project, stage, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert _tree_digest(project, outputs) == before


def test_a_stage_failing_under_dvc_in_the_flow_gets_its_last_good_outputs_back(built_project: Path, tmp_path: Path):
    """DVC removes a stage's outputs before its command runs; the flows' stage task restores them from
    DVC's cache when the stage fails, so an unattended run that fails leaves the last good project."""
    from flows.pipeline import run_stage

    from .conftest import _merge

    project = tmp_path / "p"
    copy_built(built_project, project)
    outputs = ("models/tokenizer", "models/clip", "data/shards", "metrics/tokenizer.json")
    before = _tree_digest(project, outputs)
    params = yaml.safe_load((project / "params.yaml").read_text())
    (project / "params.yaml").write_text(yaml.safe_dump(_merge(params, {"tokenizer": {"min_frequency": 0}}),
                                                        sort_keys=False))
    with pytest.raises(Exception, match="tokenizer"):
        run_stage.fn("tokenizer", project)
    assert _tree_digest(project, outputs) == before



def test_a_cancelled_stage_run_gets_its_last_good_outputs_back(tmp_path: Path, monkeypatch):
    """A cancelled flow run is told so by a signal: Prefect raises TerminationSignal (a BaseException,
    not an Exception) wherever the run is, here inside DVC's wait for the stage's command."""
    import signal

    import psutil
    from prefect.exceptions import TerminationSignal

    from flows.pipeline import _reproduce

    project = tmp_path / "p"
    project.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=project, check=True)
    (project / "in.txt").write_text("one")
    # Cancelled, the command goes on as an orphan would: a while later it writes its output anyway.
    stage = {"cmd": "cp in.txt out.txt && if [ -f cancel ]; then rm out.txt; kill -TERM $PPID; sleep 2; "
                    "cp in.txt out.txt; fi",
             "deps": ["in.txt"], "outs": ["out.txt"]}
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"copy": stage}}))
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    _reproduce("copy", project, force=False)
    assert (project / "out.txt").read_text() == "one"

    def terminate(signum, frame):  # what Prefect installs in a flow run's process
        raise TerminationSignal(signal=signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        (project / "in.txt").write_text("two")
        (project / "cancel").touch()
        with pytest.raises(TerminationSignal):
            _reproduce("copy", project, force=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (project / "out.txt").read_text() == "one"
    time.sleep(3)  # the stage's command was stopped, not left to write "two" over the restored output
    assert (project / "out.txt").read_text() == "one"
    assert not [p for p in psutil.Process().children(recursive=True) if p.environ().get("DVC_STAGE") == "copy"]
