"""Evaluation: metric correctness, template ensembling, datasets and models added through params only."""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from biomedclip_factory.errors import DataError, ParamsError
from biomedclip_factory.evaluate.zeroshot import ZeroShotTask, class_embeddings, classification_metrics, load_dataset

from .conftest import REPO, copy_built, run_stage


def test_auroc_and_balanced_accuracy_hand_computed():
    # binary: positive-class probabilities 0.9, 0.4 (positives) vs 0.6, 0.1 (negatives) → 3 of 4 pairs ordered
    p1 = torch.tensor([0.9, 0.4, 0.6, 0.1])
    logits = torch.stack([torch.log(1 - p1), torch.log(p1)], dim=1)
    m = classification_metrics(logits, torch.tensor([1, 1, 0, 0]), 2)
    assert m["auroc"] == pytest.approx(0.75)
    assert m["accuracy"] == 0.5 and m["balanced_accuracy"] == 0.5  # predicts 1,0,1,0
    assert m["confusion"] == [[1, 1], [1, 1]] and m["chance"]["auroc"] == 0.5


def test_auroc_ranks_confident_scores_a_float32_softmax_would_tie():
    """Margins of 18 to 40 all round to probability 1.0 in float32; their order is still the model's."""
    margins = torch.tensor([30.0, 25.0, 20.0, 40.0, -3.0, 18.0, 22.0])
    y = torch.tensor([1, 1, 0, 1, 0, 0, 1])
    assert classification_metrics(torch.stack([-margins / 2, margins / 2], dim=1), y, 2)["auroc"] == 1.0
    # three classes at zero-shot's scale: class 0's members (log-odds 50, 40) above the member of class 1 that
    # looks like class 0 (30); a float32 softmax puts all three at 1.0 and would give class 0 0.875
    logits = torch.tensor([[90.0, 40, 0], [80, 40, 0], [60, 30, 0], [0, 50, 0], [0, 0, 50], [0, 10, 60]])
    assert classification_metrics(logits, torch.tensor([0, 0, 1, 1, 2, 2]), 3)["auroc"] == 1.0
    assert (logits.softmax(dim=1)[:3, 0] == 1.0).all()
    # a probe's class its train split lacked: never chosen, every image alike for its own AUROC (0.5)
    never = torch.tensor([[2.0, 1, float("-inf")], [1, 2, float("-inf")], [0, 0.5, float("-inf")], [0.5, 0, float("-inf")]])
    m = classification_metrics(never, torch.tensor([0, 1, 2, 2]), 3)
    assert m["auroc"] == pytest.approx(np.mean([1.0, 1.0, 0.5])) and all(row[2] == 0 for row in m["confusion"])


class _FakeEncoder:
    """Embeds a prompt as a fixed vector per word count: enough to check the averaging arithmetic."""

    def embed_texts(self, texts):
        rows = torch.tensor([[float(len(t.split())), 1.0, 0.0] for t in texts])
        return torch.nn.functional.normalize(rows, dim=1)


def test_template_ensembling_is_the_renormalised_mean():
    templates = ("a {}", "this is a photo of {}")
    got = class_embeddings(_FakeEncoder(), ["x", "two words"], templates)
    for row, name in zip(got, ["x", "two words"]):
        manual = _FakeEncoder().embed_texts([t.format(name) for t in templates]).mean(dim=0)
        torch.testing.assert_close(row, manual / manual.norm())


def test_npz_and_imagefolder_datasets(tmp_path):
    np.savez(tmp_path / "d.npz", test_images=np.zeros((5, 28, 28), np.uint8), test_labels=np.array([[0], [1], [2], [1], [0]]))
    images, labels = load_dataset(ZeroShotTask("d", tmp_path / "d.npz", {"1": "b", "0": "a"}, ("{}",)))
    assert labels == [1, 0, 0, 1] and images[0].shape == (28, 28)  # label 2 is not in the suite: left out
    for name, arrays, problem in (("multi", np.zeros((5, 3), int), "multi-label"),  # ChestMNIST's 14 findings
                                  ("short", np.zeros(4, int), "5 images but 4 labels"),
                                  ("float", np.zeros(5), "of type float64")):
        np.savez(tmp_path / f"{name}.npz", test_images=np.zeros((5, 28, 28), np.uint8), test_labels=arrays)
        with pytest.raises(DataError, match=f"zero-shot '{name}': .*{name}.npz split 'test': .*{problem}"):
            load_dataset(ZeroShotTask(name, tmp_path / f"{name}.npz", {"0": "a", "1": "b"}, ("{}",)))
    with pytest.raises(DataError, match="class keys \\['a', 'b'\\] must be the integer labels"):
        load_dataset(ZeroShotTask("d", tmp_path / "d.npz", {"a": "a", "b": "b"}, ("{}",)))
    (tmp_path / "f" / "yes").mkdir(parents=True)
    (tmp_path / "f" / "no").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "f" / "yes" / "1.png")
    (tmp_path / "f" / "yes" / "2.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="class folder is empty or missing: .*f/no"):
        load_dataset(ZeroShotTask("f", tmp_path / "f", {"yes": "y", "no": "n"}, ("{}",)))
    Image.new("RGB", (8, 8)).save(tmp_path / "f" / "no" / "1.png")
    (tmp_path / "f" / "no" / "._1.png").write_bytes(b"\0\5\26\7")  # macOS's AppleDouble beside a copied file
    images, labels = load_dataset(ZeroShotTask("f", tmp_path / "f", {"yes": "y", "no": "n"}, ("{}",)))
    assert labels == [0, 0, 1] and [p.name for p in images] == ["1.png", "2.png", "1.png"]  # paths: decoded later


def test_datasets_stream_through_decoding_workers_and_skip_an_unreadable_image(tmp_path, monkeypatch):
    """A dataset is decoded as it is embedded (by DataLoader workers on the GPU machine): an image that
    cannot be decoded is named and skipped, and the workers change nothing in the embeddings."""
    from biomedclip_factory.evaluate.embed import Encoder

    from .conftest import tiny_model_dir

    encoder = Encoder.load(tiny_model_dir(tmp_path / "m"), torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    files = []
    for i in range(7):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray((torch.rand(30 + i, 40, 3, generator=g) * 255).to(torch.uint8).numpy()).save(files[-1])
    files[3].write_bytes(b"not a png")
    monkeypatch.chdir(tmp_path)  # the project, as DVC runs a stage: reports name files from there
    inline = encoder.embed_files(files, batch_size=3)
    assert inline.kept == [0, 1, 2, 4, 5, 6] and inline.problems == ["3.png: not an image format Pillow reads"]
    workers = replace(encoder, workers=2).embed_files(files, batch_size=3)
    assert workers.kept == inline.kept and workers.problems == inline.problems
    torch.testing.assert_close(workers.vectors, inline.vectors, rtol=0, atol=0)
    with Image.open(files[5]) as img:  # the same as an image already in memory (a request's)
        torch.testing.assert_close(inline.vectors[4:5], encoder.embed_images([img]), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_models_and_datasets_added_through_params_only(built_project: Path, tmp_path: Path):
    project = tmp_path / "p"
    copy_built(built_project, project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    suite = yaml.safe_load((REPO / "params.yaml").read_text())["evaluate"]["zeroshot"]
    params["evaluate"]["zeroshot"] = {**suite, "missing": {**suite["brain_tumor_mri"], "path": "no/such/dir"}}
    params["evaluate"]["models"] = {"copy": "local-dir:models/clip", "champion": "models:/biomedclip-factory@champion",
                                    "nope": "models:/biomedclip-factory@no-such-alias"}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run_stage(project, "evaluate")
    report = json.loads((project / "metrics/eval.json").read_text())["models"]
    assert set(report) == {"ours", "copy", "champion", "nope"}
    assert "not in the registry" in report["nope"]["error"]
    ours, copy, champion = report["ours"], report["copy"], report["champion"]
    assert champion["retrieval"] == ours["retrieval"]  # the registered champion is the model we trained
    assert ours["zeroshot"]["pneumoniamnist"]["images"] == 200 and ours["zeroshot"]["brain_tumor_mri"]["images"] == 48
    assert "dataset not found" in ours["zeroshot"]["missing"]["error"]
    assert ours["zeroshot"]["brain_tumor_mri"]["score"] == copy["zeroshot"]["brain_tumor_mri"]["score"]
    assert ours["retrieval"]["train"] == copy["retrieval"]["train"]
    table = (project / "metrics/eval.md").read_text()
    assert "| metric | ours | copy | champion | chance |" in table and "- nope: model models:/" in table
    assert "evaluate: zero-shot 'missing': dataset not found" in proc.stdout
    probe = ours["linear_probe"]["pneumoniamnist"]
    assert [probe["fractions"][f]["train_images"] for f in ("0.01", "0.1", "1")] == [4, 40, 400]
    assert probe["fractions"]["0.1"]["runs"] == 3 and probe["test_images"] == 200
    assert "linear probe pneumoniamnist accuracy at 10% of train (40 images, 3 seeds)" in table


@pytest.mark.slow  # the built project
def test_an_evaluation_with_nothing_to_plot_still_completes_under_dvc(built_project: Path, tmp_path: Path):
    """Every zero-shot set unreadable and no retrieval split: the stage reports that and still writes its
    declared plots, or DVC fails the run after the work is done."""
    import subprocess
    import sys

    from .conftest import project_env

    project = tmp_path / "p"
    copy_built(built_project, project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["evaluate"].update(retrieval_splits=[], vqa={})
    params["evaluate"]["linear_probe"]["sets"] = {}
    for task in params["evaluate"]["zeroshot"].values():
        task["path"] = "no/such/dir"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**project_env(project), "PATH": f"{Path(sys.executable).parent}:{project_env(project)['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item", "evaluate"], cwd=project,
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (project / "plots/confusion").is_dir() and not any((project / "plots/confusion").iterdir())
    assert Image.open(project / "plots/retrieval_examples.png").size[0] > 0
    report = json.loads((project / "metrics/eval.json").read_text())["models"]["ours"]
    assert all("dataset not found" in task["error"] for task in report["zeroshot"].values())


@pytest.mark.slow  # the built project
def test_an_unreadable_gallery_sample_is_counted_not_silently_dropped(built_project: Path, tmp_path: Path):
    """A corrupt image in a test shard, decoded in a worker process: the gallery shrinks by one and the
    report says so (a worker's skip count never reaches the parent)."""
    import io
    import tarfile

    from biomedclip_factory.evaluate.embed import Encoder
    from biomedclip_factory.evaluate.suite import split_retrieval

    shards = tmp_path / "shards"
    shutil.copytree(built_project / "data/shards", shards)
    tar_path = next((shards / "test").glob("*.tar"))
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]

    def break_images(count: int) -> None:
        with tarfile.open(tar_path, "w") as tar:
            for member, data in members:
                if member.name.endswith(".jpg") and count:
                    data, count = b"\xff\xd8not a jpeg" + bytes(len(data)), count - 1
                    member.size = len(data)
                tar.addfile(member, io.BytesIO(data))

    break_images(1)
    encoder = replace(Encoder.load(built_project / "models/clip"), workers=1)
    result, meta, _ = split_retrieval(encoder, shards, "test", 8)
    assert result["gallery_size"] == len(meta) == 1 and result["unreadable"] == 1
    break_images(2)  # nothing left to rank: an error, never a gallery of 0 that reads as a score
    with pytest.raises(DataError, match="split 'test' in .*: none of its 2 samples could be read"):
        split_retrieval(encoder, shards, "test", 8)


def test_a_broken_model_dir_is_a_clear_error(tmp_path):
    from biomedclip_factory.evaluate.models import load_encoder

    (tmp_path / "m").mkdir()
    with pytest.raises(DataError, match="no open_clip_config.json"):
        load_encoder("local-dir:m", tmp_path)
    (tmp_path / "m" / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 8, "vision_cfg": {},
                                                                                    "text_cfg": {"hf_model_name": "x"}}}))
    with pytest.raises(DataError, match="model local-dir:m: cannot load"):
        load_encoder("local-dir:m", tmp_path)


def test_each_model_is_scored_through_its_own_preprocessing(tmp_path):
    """A model in evaluate.models with other normalisation and resizing is fed as open_clip feeds it."""
    import open_clip

    from biomedclip_factory.evaluate.embed import Encoder

    from .conftest import tiny_model_dir

    model_dir = tiny_model_dir(tmp_path)
    config = json.loads((model_dir / "open_clip_config.json").read_text())
    config["preprocess_cfg"].update(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], interpolation="bilinear",
                                    resize_mode="squash")
    (model_dir / "open_clip_config.json").write_text(json.dumps(config))
    _, _, theirs = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    ours = Encoder.load(model_dir).preprocess
    image = Image.fromarray((np.random.default_rng(0).random((90, 200, 3)) * 255).astype(np.uint8))
    assert torch.equal(ours(image), theirs(image)) and repr(ours) == repr(theirs)


def test_multiclass_auroc_ranks_the_models_logit_scaled_probabilities(tmp_path):
    """Three classes: softmax over raw cosines and over scale × cosines order the images differently per
    class, so one-vs-rest AUROC must use the model's own scale (as its zero-shot probabilities do)."""
    from biomedclip_factory.evaluate.embed import Encoder
    from biomedclip_factory.evaluate.zeroshot import evaluate_zeroshot

    from .conftest import tiny_model_dir

    encoder = Encoder.load(tiny_model_dir(tmp_path))
    g = torch.Generator().manual_seed(0)
    for label, name in enumerate(("a", "b", "c")):
        (tmp_path / "set" / name).mkdir(parents=True)
        for i in range(6):
            array = (torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(array).save(tmp_path / "set" / name / f"{i}.png")
    task = ZeroShotTask("set", tmp_path / "set", {"a": "nodule", "b": "fracture", "c": "effusion"}, ("{}", "a {}"),
                        metric="auroc")
    images, labels = load_dataset(task)
    cosines = encoder.embed_files(images).vectors @ class_embeddings(encoder, ["nodule", "fracture", "effusion"],
                                                              task.templates).T
    for scale in (1.0, 100.0):
        with torch.no_grad():
            encoder.model.logit_scale.fill_(math.log(scale))
        expected = classification_metrics(scale * cosines, torch.tensor(labels), 3)["auroc"]
        assert evaluate_zeroshot(encoder, task, 8)["auroc"] == pytest.approx(expected, abs=1e-9)
    unscaled, scaled = (classification_metrics(s * cosines, torch.tensor(labels), 3)["auroc"] for s in (1.0, 100.0))
    assert unscaled != pytest.approx(scaled, abs=1e-6)  # the scale matters for this metric


def test_linear_probe_separates_what_is_separable_and_nothing_else():
    """Well-separated class clusters: accuracy 1.0 at every fraction; labels drawn at random: chance."""
    from biomedclip_factory.evaluate.linear_probe import probe_scores, subset

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 32)) * 6
    y_train, y_test = rng.integers(0, 3, 600), rng.integers(0, 3, 300)
    x_train, x_test = centres[y_train] + rng.normal(size=(600, 32)), centres[y_test] + rng.normal(size=(300, 32))
    separable = probe_scores(x_train, y_train, x_test, y_test, 3, (0.01, 0.1, 1.0), (0, 1), "accuracy")
    assert {f: r["score"] for f, r in separable.items()} == {"0.01": 1.0, "0.1": 1.0, "1": 1.0}
    assert separable["0.01"]["train_images"] == 6 and separable["0.01"]["runs"] == 2 and separable["1"]["runs"] == 1
    noise_train, noise_test = rng.normal(size=(600, 32)), rng.normal(size=(300, 32))
    shuffled = probe_scores(noise_train, rng.integers(0, 3, 600), noise_test, rng.integers(0, 3, 300), 3, (1.0,),
                            (0,), "balanced_accuracy")
    assert abs(shuffled["1"]["score"] - 1 / 3) < 0.08
    labels = np.array([0] * 50 + [1] * 150)
    picked = subset(labels, 0.1, seed=4)
    assert list(np.bincount(labels[picked])) == [5, 15] and list(subset(labels, 0.1, 4)) == list(picked)


def test_a_probe_on_a_young_models_embeddings_fits_to_the_optimum(monkeypatch):
    """Embeddings of a barely trained CLIP crowd around one direction, the class signal in weak ones. At
    L-BFGS's default tolerance the fit stopped far short of the optimum (74% off here), and where it
    stopped moved with the features' last bits: the same model's probe scored 0.69 or 0.71 from one
    process to the next. The probe must be the regularised optimum's, whatever the process, and say
    when a fit did not converge."""
    from sklearn.linear_model import LogisticRegression

    from biomedclip_factory.evaluate.linear_probe import fit_probe

    basis = np.linalg.qr(np.random.default_rng(0).normal(size=(128, 9)))[0].T
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    weak = rng.normal(size=(400, 8)) * np.array([0.14, 0.02, 0.012, 0.005, 0.004, 0.003, 0.0025, 0.002])
    weak[:, 1] += 0.015 * (2 * y - 1)
    x = basis[0] + weak @ basis[1:]
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # as the encoder gives them
    probe, unconverged = fit_probe(x, y, seed=0)
    assert unconverged == 0
    optimum = LogisticRegression(C=float(np.ravel(probe.C_)[0]), tol=1e-12, max_iter=100_000).fit(x.astype(np.float64), y)
    weights = lambda m: np.append(m.coef_, m.intercept_)  # noqa: E731
    assert np.linalg.norm(weights(probe) - weights(optimum)) / np.linalg.norm(weights(optimum)) < 1e-3
    nudged, _ = fit_probe((x * (1 + 1e-7)).astype(np.float32), y, seed=0)
    assert np.array_equal(nudged.C_, probe.C_)
    assert np.linalg.norm(weights(nudged) - weights(probe)) / np.linalg.norm(weights(probe)) < 1e-4

    from biomedclip_factory.evaluate import linear_probe
    from biomedclip_factory.evaluate.report import markdown_report

    monkeypatch.setattr(linear_probe, "PROBE_MAX_ITER", 1)  # too few steps for the tolerance: counted, and shown
    fractions = linear_probe.probe_scores(x, y, x, y, 2, (1.0,), (0,), "accuracy")
    assert fractions["1"]["unconverged_fits"] > 0
    report = markdown_report({"ours": {"linear_probe": {"young": {"metric": "accuracy", "chance": {"accuracy": 0.5},
                                                                   "fractions": fractions}}}})
    assert f"({fractions['1']['unconverged_fits']} fits unconverged)" in report


def test_evaluation_precision_is_the_params_and_bf16_autocast_only_when_asked(tmp_path):
    from biomedclip_factory.evaluate.embed import Encoder
    from biomedclip_factory.evaluate.tasks import Suite
    from biomedclip_factory.params import Section

    from .conftest import CAPTIONS, tiny_model_dir

    base = {"batch_size": 8, "retrieval_splits": [], "zeroshot": {}, "vqa": {},
            "linear_probe": {"fractions": [1.0], "seeds": [0], "sets": {}}}
    assert Suite.from_params(Section(base, "evaluate"), tmp_path).precision == "fp32"
    assert Suite.from_params(Section({**base, "precision": "amp_bf16"}, "evaluate"), tmp_path).precision == "amp_bf16"
    with pytest.raises(ParamsError, match="'evaluate.precision' must be one of"):
        Suite.from_params(Section({**base, "precision": "bf16"}, "evaluate"), tmp_path)
    encoder = Encoder.load(tiny_model_dir(tmp_path / "m"), torch.device("cpu"))
    fp32, bf16 = encoder.embed_texts(CAPTIONS), replace(encoder, precision="amp_bf16").embed_texts(CAPTIONS)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        by_hand = encoder.model.encode_text(encoder.tokenize(CAPTIONS), normalize=True).float()
    assert bf16.dtype == torch.float32 and torch.equal(bf16, by_hand) and not torch.equal(bf16, fp32)
    assert torch.nn.functional.cosine_similarity(fp32, bf16).min() > 0.99


def test_the_table_holds_every_task_some_model_scored_with_its_unreadable_images():
    from biomedclip_factory.evaluate.report import markdown_report

    scored = {"metric": "auroc", "score": 0.7, "images": 48, "chance": {"auroc": 0.5},
              "unreadable": ["x/1.png: cannot identify image", "x/2.png: truncated"]}
    table = markdown_report({"ours": {"zeroshot": {"rsna": {"error": "zero-shot 'rsna': dataset not found"}}},
                             "released": {"zeroshot": {"rsna": scored}}})
    assert "| zero-shot rsna auroc (48 images, 2 unreadable) | – | 0.700 | 0.500 |" in table
    assert "- ours / rsna: zero-shot 'rsna': dataset not found" in table


def test_a_probe_judged_by_auroc_picks_its_regularisation_by_auroc():
    """6% positives (TCGA-TIL is skewed alike): by accuracy every C ties with 'always negative' and the
    strongest regularisation wins; by AUROC, the reported metric, the C that ranks best does."""
    from biomedclip_factory.evaluate.linear_probe import C_GRID, probe_scores

    rng = np.random.default_rng(4)
    y = (rng.random(400) < 0.06).astype(int)
    x = rng.normal(size=(400, 20))
    x[:, 0] += 0.8 * y
    by_accuracy = probe_scores(x, y, x, y, 2, (1.0,), (0,), "accuracy")["1"]["C"]
    by_auroc = probe_scores(x, y, x, y, 2, (1.0,), (0,), "auroc")["1"]["C"]
    assert by_accuracy == [C_GRID[0]] and by_auroc != by_accuracy


def test_multiclass_auroc_over_the_classes_a_set_holds():
    """A class the test set lacks: the one-vs-rest mean over the classes present, not NaN."""
    from sklearn.metrics import roc_auc_score

    logits = torch.tensor([[2.0, 0.1, 0.3], [0.2, 1.5, 0.1], [1.0, 0.9, 0.2], [0.1, 0.3, 2.0],
                           [0.5, 0.4, 0.1], [0.2, 0.1, 0.9]])
    labels = torch.tensor([0, 1, 0, 1, 0, 1])  # class 2 absent
    probs = logits.softmax(dim=1).numpy()
    want = np.mean([roc_auc_score(labels.numpy() == c, probs[:, c]) for c in (0, 1)])
    assert classification_metrics(logits, labels, 3)["auroc"] == pytest.approx(want)
    full = torch.tensor([0, 1, 0, 1, 2, 2])  # every class present: sklearn's one-vs-rest macro, unchanged
    assert classification_metrics(logits, full, 3)["auroc"] == pytest.approx(
        roc_auc_score(full.numpy(), probs, multi_class="ovr"))


PAPER_ZEROSHOT = {  # Supplementary Table 5 of the BiomedCLIP paper: class names in its order, its two templates
    "pcam": (["normal lymph node", "lymph node metastasis"], ["this is an image of {}", "{} presented in image"], "accuracy"),
    "lc25000_lung": (["lung adenocarcinomas", "normal lung tissue", "lung squamous cell carcinomas"],
                     ["this is an image of {}", "{} presented in image"], "accuracy"),
    "lc25000_colon": (["colon adenocarcinomas", "normal colonic tissue"], ["a photo of {}", "{} presented in image"],
                      "accuracy"),
    "tcga_til": (["none", "tumor infiltrating lymphocytes"], ["a photo of {}", "{} presented in image"], "auroc"),
    "rsna_pneumonia": (["normal lung", "pneumonia"], ["a photo of {}", "{} presented in image"], "accuracy"),
}


@pytest.mark.parametrize("profile", ["biomedclip.yaml", "biomedclip-384.yaml"])
def test_the_paper_profiles_hold_the_papers_zero_shot_protocol(profile):
    from biomedclip_factory.evaluate.tasks import Suite
    from biomedclip_factory.params import load_section

    suite = Suite.from_params(load_section("evaluate", REPO / "params" / profile), REPO)
    assert suite.precision == "fp32"  # the re-run that matched the paper's figures embeds in fp32, no autocast
    tasks = {t.name: t for t in suite.zeroshot}
    assert {name: (list(t.classnames.values()), list(t.templates), t.metric) for name, t in tasks.items()} == \
        PAPER_ZEROSHOT


def test_how_a_set_was_scored_changes_with_its_data_prompts_precision_and_rule_not_its_path(tmp_path):
    """The digest the gate compares a champion's set score by (evaluate/conditions.py)."""
    from biomedclip_factory.evaluate import conditions
    from biomedclip_factory.errors import ParamsError
    from biomedclip_factory.evaluate.tasks import Suite, VqaTask, ZeroShotTask
    from biomedclip_factory.params import Section

    task = ZeroShotTask("chest", tmp_path / "a", {"n": "normal", "p": "pneumonia"}, ("a photo of {}",), "auroc")
    inputs = {"evaluate.zeroshot.chest.path": {"sha256": "1" * 64, "ref": "a"}}
    digest = conditions.measured_as("zeroshot", task, inputs, "fp32")
    moved = replace(task, path=tmp_path / "b")  # the same files elsewhere
    assert conditions.measured_as("zeroshot", moved, inputs, "fp32") == digest
    others = [conditions.measured_as("zeroshot", replace(task, templates=("{}",)), inputs, "fp32"),
              conditions.measured_as("zeroshot", task, {"evaluate.zeroshot.chest.path": {"sha256": "2" * 64}}, "fp32"),
              conditions.measured_as("zeroshot", task, inputs, "amp_bf16")]
    assert len({digest, *others}) == 4
    assert conditions.measured_as("zeroshot", task, {}, "fp32") is None  # data not recorded: never "alike"
    vqa = VqaTask("rad", tmp_path, tmp_path / "t.json", tmp_path / "s.json", tmp_path / "a.json")
    vqa_inputs = {f"evaluate.vqa.rad.{part}": {"sha256": part} for part in ("images", "train", "test", "answers")}
    assert conditions.measured_as("vqa", vqa, vqa_inputs, "fp32") != \
        conditions.measured_as("vqa", replace(vqa, epochs=5), vqa_inputs, "fp32")
    report = {"ours": {"zeroshot": {"chest": {"score": 0.7}}}, "other": {"zeroshot": {"chest": {"error": "gone"}}}}
    conditions.stamp(report, Suite(batch_size=1, splits=[], zeroshot=[task]), inputs)
    assert conditions.measured_tag(report["ours"]) == {"zeroshot.chest": digest}
    assert "measured_as" not in report["other"]["zeroshot"]["chest"]  # an error was not scored
    with pytest.raises(ParamsError, match="may not hold a '.'"):
        Suite.from_params(Section({"batch_size": 1, "retrieval_splits": [], "zeroshot": {"chest.xray": {
            "path": "x", "classnames": {"a": "a"}, "templates": ["{}"]}}}, "evaluate"), tmp_path)


def test_a_probe_class_missing_from_training_is_never_predicted_and_bad_params_are_named(tmp_path):
    from biomedclip_factory.errors import ParamsError
    from biomedclip_factory.evaluate.linear_probe import probe_scores
    from biomedclip_factory.evaluate.tasks import probe_tasks
    from biomedclip_factory.params import Section

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 8)) * 6
    y_train, y_test = rng.integers(1, 3, 90), rng.integers(1, 3, 30)  # class 0 never seen in training
    x_train, x_test = centres[y_train] + rng.normal(size=(90, 8)), centres[y_test] + rng.normal(size=(30, 8))
    assert probe_scores(x_train, y_train, x_test, y_test, 3, (1.0,), (0,), "accuracy")["1"]["score"] == 1.0
    for bad, match in (({"fractions": ["x"], "seeds": [0]}, "fractions"), ({"fractions": [0.1], "seeds": ["a"]}, "seeds")):
        with pytest.raises(ParamsError, match=match):
            probe_tasks(Section({"linear_probe": {**bad, "sets": {}}}, "evaluate"), tmp_path)



def test_a_zero_shot_set_without_classes_or_with_a_template_lacking_the_class_is_named(tmp_path):
    from biomedclip_factory.errors import ParamsError
    from biomedclip_factory.evaluate.tasks import zeroshot_tasks
    from biomedclip_factory.params import Section

    good = {"path": "x", "classnames": {"ct": "CT"}, "templates": ["a {} image"]}
    assert zeroshot_tasks(Section({"zeroshot": {"set": good}}, "evaluate"), tmp_path)[0].templates == ("a {} image",)
    for bad in ({"classnames": {}}, {"templates": []}, {"templates": ["a {} image", "a CT image"]},
                {"templates": ["{} and {}"]}, {"templates": ["a {{}} image"]}):
        with pytest.raises(ParamsError, match="'evaluate.zeroshot.set' needs classnames and templates"):
            zeroshot_tasks(Section({"zeroshot": {"set": {**good, **bad}}}, "evaluate"), tmp_path)
