"""Zero-shot classification of an ImageFolder dataset with CLIP-style prompt-template ensembling."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..errors import DataError
from .embed import Encoder

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif"}


@dataclass(frozen=True)
class ZeroShotTask:
    name: str
    path: Path
    classnames: dict[str, str]  # folder name → class name used in prompts
    templates: tuple[str, ...]


def load_images(task: ZeroShotTask) -> tuple[list[Image.Image], list[int], list[str]]:
    """Images and label indices; unreadable images are reported by name and skipped."""
    if not task.path.is_dir():
        raise DataError(f"zero-shot '{task.name}': dataset folder not found: {task.path}")
    images, labels, problems = [], [], []
    for index, folder in enumerate(task.classnames):
        class_dir = task.path / folder
        files = sorted(f for f in class_dir.glob("*") if f.suffix.lower() in IMAGE_SUFFIXES) if class_dir.is_dir() else []
        if not files:
            raise DataError(f"zero-shot '{task.name}': class folder is empty or missing: {class_dir}")
        for file in files:
            try:
                with Image.open(file) as img:
                    images.append(img.convert("RGB"))
                labels.append(index)
            except OSError as exc:
                problems.append(f"{file}: {exc}")
    return images, labels, problems


def class_embeddings(encoder: Encoder, classnames: list[str], templates: tuple[str, ...]) -> torch.Tensor:
    """Mean of the normalised prompt embeddings per class, renormalised (CLIP's ensembling)."""
    rows = []
    for name in classnames:
        emb = encoder.embed_texts([t.format(name) for t in templates]).mean(dim=0)
        rows.append(emb / emb.norm())
    return torch.stack(rows)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, n_classes: int) -> dict[str, float]:
    pred = logits.argmax(dim=1)
    per_class = [float((pred[labels == c] == c).float().mean()) for c in range(n_classes) if (labels == c).any()]
    return {"accuracy": float((pred == labels).float().mean()),
            "balanced_accuracy": sum(per_class) / len(per_class),
            "chance_accuracy": float(torch.bincount(labels, minlength=n_classes).max() / len(labels)),
            "chance_balanced_accuracy": 1.0 / n_classes}


def evaluate_zeroshot(encoder: Encoder, task: ZeroShotTask, batch_size: int) -> dict:
    images, labels, problems = load_images(task)
    image_emb = encoder.embed_images(images, batch_size)
    text_emb = class_embeddings(encoder, list(task.classnames.values()), task.templates)
    metrics = classification_metrics(image_emb @ text_emb.T, torch.tensor(labels), len(task.classnames))
    return {**metrics, "images": len(images), "classes": len(task.classnames), "unreadable": problems}
