"""Human-readable outputs of an evaluation: a Markdown comparison table, confusion CSVs, an examples grid."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from ..corpus.records import image_path
from ..io import write_bytes_atomic


ARROWS = {"image_to_text": "image→text", "text_to_image": "text→image"}


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _probe_cell(run: dict | None) -> str:
    if not run:
        return "–"
    unconverged = run.get("unconverged_fits", 0)  # a score short of its optimum: not the model's alone
    return (_fmt(run["score"]) + (f" ± {run['std']:.3f}" if run["runs"] > 1 else "")
            + (f" ({unconverged} fits unconverged)" if unconverged else ""))


def _scored(ok: dict[str, dict], kind: str) -> list[tuple[str, dict]]:
    """Each task of ``kind`` that any model scored, in the order met, with the first result that has it
    (its sizes and chance levels are the dataset's, the same for every model): a task the first model
    failed still gets its row for the others."""
    found: dict[str, dict] = {}
    for result in ok.values():
        for task, res in result.get(kind, {}).items():
            if "error" not in res and (kind != "retrieval" or res.get("gallery_size")):
                found.setdefault(task, res)
    return list(found.items())


def _unreadable(res: dict) -> str:
    lost = res.get("unreadable")
    count = len(lost) if isinstance(lost, list) else lost  # retrieval counts them; the sets name them
    return f", {count} unreadable" if count else ""


def markdown_report(models: dict[str, dict]) -> str:
    """One table: a row per metric, a column per model, chance beside every score (for VQA: the
    commonest training answer of each kind)."""
    ok = {name: r for name, r in models.items() if "error" not in r}
    names = list(ok)
    rows: list[tuple[str, list[str], str]] = []
    for split, ret in _scored(ok, "retrieval"):
        for direction in ("image_to_text", "text_to_image"):
            for k in ret[direction]:
                label = f"retrieval {split} {ARROWS[direction]} {k} (gallery {ret['gallery_size']}{_unreadable(ret)})"
                values = [_fmt(ok[n].get("retrieval", {}).get(split, {}).get(direction, {}).get(k, "–"))
                          for n in names]
                rows.append((label, values, _fmt(ret["chance"][direction][k])))
    for task, res in _scored(ok, "zeroshot"):
        metric = res["metric"]
        values = [_fmt(ok[n].get("zeroshot", {}).get(task, {}).get("score", "–")) for n in names]
        rows.append((f"zero-shot {task} {metric} ({res['images']} images{_unreadable(res)})", values,
                     _fmt(res["chance"][metric])))
    for task, res in _scored(ok, "linear_probe"):
        for fraction, run in res["fractions"].items():
            values = [_probe_cell(ok[n].get("linear_probe", {}).get(task, {}).get("fractions", {}).get(fraction))
                      for n in names]
            label = (f"linear probe {task} {res['metric']} at {float(fraction):.0%} of train "
                     f"({run['train_images']} images" + (f", {run['runs']} seeds" if run["runs"] > 1 else "")
                     + f"{_unreadable(res)})")
            rows.append((label, values, _fmt(res["chance"][res["metric"]])))
    for task, res in _scored(ok, "vqa"):
        for part in ("closed", "open", "overall"):
            values = [_fmt(ok[n].get("vqa", {}).get(task, {}).get(part, "–")) for n in names]
            rows.append((f"VQA {task} {part} accuracy ({res['questions'][part]} questions; frozen towers + MLP head)",
                         values, _fmt(res["baseline"][part])))
            blind = [_fmt(ok[n].get("vqa", {}).get(task, {}).get("question_only", {}).get(part, "–")) for n in names]
            rows.append((f"VQA {task} {part}, the same head on the question alone", blind, _fmt(res["baseline"][part])))
    lines = ["# Evaluation", "", "| metric | " + " | ".join(names) + " | chance |",
             "|---|" + "---|" * (len(names) + 1)]
    lines += [f"| {label} | " + " | ".join(values) + f" | {chance} |" for label, values, chance in rows]
    problems = [f"- {name}: {r['error']}" for name, r in models.items() if "error" in r]
    problems += [f"- {name} / {task}: {res['error']}" for name, r in ok.items()
                 for kind in ("zeroshot", "linear_probe", "vqa") for task, res in r.get(kind, {}).items() if "error" in res]
    if problems:
        lines += ["", "## Not evaluated", "", *problems]
    return "\n".join(lines) + "\n"


def confusion_rows(confusion: list[list[int]], classes: list[str]) -> str:
    """DVC's confusion-plot input: one ``actual,predicted`` row per image."""
    out = ["actual,predicted"]
    for i, row in enumerate(confusion):
        for j, count in enumerate(row):
            out += [f"{classes[i]},{classes[j]}"] * count
    return "\n".join(out) + "\n"


def examples_grid(examples: list[tuple[Path, str, str]], width: int = 320, empty: str = "") -> Image.Image:
    """A column of (image, true caption, top-1 retrieved caption) rows for eyeballing retrieval
    (``empty`` written on it when there are none)."""
    row_h = 200
    canvas = Image.new("RGB", (width * 3, max(1, len(examples)) * row_h), "white")
    draw = ImageDraw.Draw(canvas)
    if not examples:
        draw.text((5, 5), empty, fill="black")
    for i, (path, truth, retrieved) in enumerate(examples):
        with Image.open(path) as img:
            img.thumbnail((width - 10, row_h - 10))
            canvas.paste(img.convert("RGB"), (5, i * row_h + 5))
        mark = "correct" if truth == retrieved else "wrong"
        for col, (title, text) in enumerate((("true caption", truth), (f"top-1 retrieved ({mark})", retrieved)), start=1):
            body = "\n".join(textwrap.wrap(text, 48)[:10])
            draw.text((col * width + 5, i * row_h + 5), f"{title}:\n{body}", fill="black")
    return canvas


def flat_metrics(report: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves as dotted MLflow metric names ('@' is not allowed there); NaN left out."""
    out: dict[str, float] = {}
    for key, value in report.items():
        name = f"{prefix}{key}".replace("@", "_at_")
        if isinstance(value, dict):
            out.update(flat_metrics(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            out[name] = float(value)
    return out


def write_plots(ours: dict, kept: dict, split: str, confusion: Path, examples_png: Path, pairs: Path) -> None:
    """DVC's plots of our model: a confusion CSV per zero-shot set, and a grid of ``split``'s retrieval
    examples (each image with its own caption and the one ranked first), images from the pairs folder."""
    confusion.mkdir(parents=True, exist_ok=True)  # both are declared outputs: DVC fails a run that lacks one
    for task, res in ours["zeroshot"].items():
        if "confusion" in res:
            write_bytes_atomic(confusion / f"{task}.csv", confusion_rows(res["confusion"], res["classes"]).encode())
    meta, sim = kept.get(split, ([], None))
    examples = []
    if meta:
        top1 = sim.argmax(dim=1).tolist()
        examples = [(pairs / image_path(m["pair_id"]), m["caption"], meta[j]["caption"]) for m, j in zip(meta, top1)]
    examples_png.parent.mkdir(parents=True, exist_ok=True)
    examples_grid(examples, empty=f"no '{split}' retrieval examples to show").save(examples_png)

