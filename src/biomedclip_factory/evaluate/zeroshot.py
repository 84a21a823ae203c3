"""Zero-shot classification with CLIP-style prompt-template ensembling, for any dataset in config.

A dataset is a folder in ImageFolder layout (one sub-folder per class) or a MedMNIST-style ``.npz``
(``<split>_images``, ``<split>_labels``); class names, templates and the headline metric come from
params, so a new dataset needs no code. Class order follows the config (it changes results, as the
BiomedCLIP paper notes, so it is kept explicit).
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score

from ..errors import DataError
from ..io import is_hidden
from .embed import Embedded, Encoder, ImageSource
from .tasks import ZeroShotTask

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif"}


def _imagefolder(task: ZeroShotTask) -> tuple[list[ImageSource], list[int]]:
    images: list[ImageSource] = []
    labels = []
    for index, folder in enumerate(task.classnames):
        class_dir = task.path / folder
        files = sorted(f for f in class_dir.glob("*") if f.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(f.name)) \
            if class_dir.is_dir() else []
        if not files:
            raise DataError(f"zero-shot '{task.name}': class folder is empty or missing: {class_dir}")
        images += files
        labels += [index] * len(files)
    return images, labels


def _npz(task: ZeroShotTask) -> tuple[list[ImageSource], list[int]]:
    """A single-label MedMNIST-style split; labels the suite does not name are left out, and said."""
    where = f"zero-shot '{task.name}': {task.path} split '{task.npz_split}'"
    try:
        data = np.load(task.path)
        arrays, raw_labels = data[f"{task.npz_split}_images"], data[f"{task.npz_split}_labels"]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{where}: cannot read it: {exc}") from exc
    if raw_labels.ndim > 2 or (raw_labels.ndim == 2 and raw_labels.shape[1] != 1):
        raise DataError(f"{where}: labels of shape {raw_labels.shape} are multi-label; a set here has one per image")
    raw_labels = raw_labels.reshape(-1)
    if len(raw_labels) != len(arrays) or not np.issubdtype(raw_labels.dtype, np.integer):
        raise DataError(f"{where}: {len(arrays)} images but {len(raw_labels)} labels of type {raw_labels.dtype}; "
                        "one integer label per image is needed")
    try:
        order = {int(k): i for i, k in enumerate(task.classnames)}
    except ValueError:
        raise DataError(f"{where}: the class keys {list(task.classnames)} must be the integer labels the file "
                        "holds") from None
    kept = [i for i, label in enumerate(raw_labels) if int(label) in order]
    if len(kept) < len(raw_labels):
        print(f"{where}: {len(raw_labels) - len(kept)} images of labels the suite does not name left out", flush=True)
    return [arrays[i] for i in kept], [order[int(raw_labels[i])] for i in kept]


def load_dataset(task: ZeroShotTask) -> tuple[list[ImageSource], list[int]]:
    """The images (files, or a .npz's uint8 arrays: decoded later, as they are embedded) and label indices."""
    if task.path.suffix == ".npz" and task.path.is_file():
        return _npz(task)
    if not task.path.is_dir():
        raise DataError(f"zero-shot '{task.name}': dataset not found: {task.path}")
    return _imagefolder(task)


def class_embeddings(encoder: Encoder, classnames: list[str], templates: tuple[str, ...]) -> torch.Tensor:
    """Mean of the normalised prompt embeddings per class, renormalised (CLIP's ensembling)."""
    rows = []
    for name in classnames:
        emb = encoder.embed_texts([t.format(name) for t in templates]).mean(dim=0)
        rows.append(emb / emb.norm())
    return torch.stack(rows)


def chance_levels(labels: np.ndarray, n_classes: int) -> dict[str, float]:
    """What each metric gives without looking: always the majority class; always one class (balanced accuracy
    averages recall over the classes the set holds, as scikit-learn's does, so a set lacking some of the
    ``n_classes`` is easier to guess); a random ranking."""
    return {"accuracy": float(np.bincount(labels, minlength=n_classes).max() / len(labels)),
            "balanced_accuracy": 1.0 / len(np.unique(labels)), "auroc": 0.5}


def one_vs_rest_scores(logits: torch.Tensor) -> np.ndarray:
    """Per class, the log-odds of its softmax probability, log p / (1 - p), in float64: it ranks the images
    as the probability does, but never saturates. A float32 softmax rounds every logit gap above ~17 to
    probability 1.0 (a zero-shot cosine gap of 0.17 at logit scale 100; a linear probe's margins), and the
    ties it makes among confident positives pull AUROC down, once to 0.67 where the ranking was perfect."""
    x = logits.double()
    rest = [torch.logsumexp(torch.cat([x[:, :c], x[:, c + 1:]], dim=1), dim=1) for c in range(x.shape[1])]
    # a class never chosen (logit -inf: a probe whose train split lacked it) ranks every image alike
    return torch.nan_to_num(x - torch.stack(rest, dim=1), nan=float("nan"), neginf=torch.finfo(x.dtype).min).numpy()


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, n_classes: int) -> dict:
    """Accuracy, balanced accuracy and AUROC (binary, or one-vs-rest macro), each with its chance level."""
    y, pred = labels.numpy(), logits.argmax(dim=1).numpy()
    scores = one_vs_rest_scores(logits)
    present = np.unique(y)
    if len(present) < 2:
        auroc = float("nan")
    elif n_classes == 2:
        auroc = float(roc_auc_score(y, scores[:, 1]))
    else:  # one-vs-rest macro over the classes the set holds (sklearn's "ovr" gives NaN when one is absent)
        auroc = float(np.mean([roc_auc_score(y == c, scores[:, c]) for c in present]))
    return {"accuracy": float((pred == y).mean()),
            "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "auroc": auroc,
            "chance": chance_levels(y, n_classes),
            "confusion": confusion_matrix(y, pred, labels=list(range(n_classes))).tolist()}


def embed_labelled(encoder: Encoder, task: ZeroShotTask, batch_size: int, kind: str) -> tuple[Embedded, np.ndarray]:
    """The set's readable images embedded (streamed) and their labels; the unreadable ones are in ``problems``."""
    images, labels = load_dataset(task)
    embedded = encoder.embed_files(images, batch_size)
    if not embedded.kept:
        raise DataError(f"{kind} '{task.name}': no readable images in {task.path}")
    return embedded, np.array(labels)[embedded.kept]


def evaluate_zeroshot(encoder: Encoder, task: ZeroShotTask, batch_size: int) -> dict:
    embedded, labels = embed_labelled(encoder, task, batch_size, "zero-shot")
    image_emb = embedded.vectors
    text_emb = class_embeddings(encoder, list(task.classnames.values()), task.templates)
    # The model's own scaled logits, as CLIP scores zero-shot: softmax over raw cosines would flatten the
    # class probabilities that multi-class AUROC ranks by (argmax metrics are unchanged by the scale).
    logits = encoder.logit_scale * image_emb @ text_emb.T
    metrics = classification_metrics(logits, torch.from_numpy(labels), len(task.classnames))
    return {**metrics, "metric": task.metric, "score": metrics[task.metric], "images": len(labels),
            "classes": list(task.classnames.values()), "unreadable": embedded.problems}
