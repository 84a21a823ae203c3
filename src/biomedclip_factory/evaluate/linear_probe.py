"""Data-efficient classification, the paper's second evaluation: a linear probe on frozen image embeddings.

Per dataset, a logistic regression is trained on 1%, 10% and 100% (from params) of a labelled train
split, stratified and seeded, and scored on the test split. As in CLIP's linear probe the
regularisation strength C is chosen on held-out folds of the training subset (scikit-learn's
``LogisticRegressionCV``), never on the test split, by the metric the set reports. Fractions below 1 are repeated over the seeds and
reported as mean ± std; the full split is one run. Train and test sets use the zero-shot suite's
dataset forms (ImageFolder or MedMNIST ``.npz``), so a new dataset is params only.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegressionCV

from ..errors import DataError
from .embed import Encoder
from .tasks import ProbeTask
from .zeroshot import chance_levels, classification_metrics, embed_labelled

# CLIP's sweep range (10^-6..10^6; its 96 steps made 13): unit-norm embeddings of a large set can want
# C far above 10^4, where a narrower grid would pick its edge.
C_GRID = np.logspace(-6, 6, 13)
PROBE_TOL, PROBE_MAX_ITER = 1e-8, 100  # Newton steps: a few reach the tolerance


def subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a stratified ``fraction`` of ``labels`` (at least 2 per class, so folds exist)."""
    rng = np.random.default_rng(seed)
    picked = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        take = min(len(members), max(2, round(fraction * len(members))))
        picked.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(picked))


def cv_scoring(metric: str, n_classes: int) -> str:
    """scikit-learn's scorer for the metric the probe reports: C is chosen on the metric it is judged by
    (by accuracy, a skewed set such as TCGA-TIL picks the strongest regularisation, the majority class)."""
    if metric == "auroc":
        return "roc_auc" if n_classes == 2 else "roc_auc_ovr"
    return metric


def fit_probe(features: np.ndarray, labels: np.ndarray, seed: int,
              metric: str = "accuracy") -> tuple[LogisticRegressionCV, int]:
    """Logistic regression with C picked by cross-validation on the training features alone, and how
    many of its fits stopped at ``PROBE_MAX_ITER`` short of ``PROBE_TOL``.

    Newton's method to a tight tolerance: L-BFGS at its default tolerance (1e-4) stopped a young
    model's probe far from the optimum (its embeddings crowd around one direction; each C's fit
    starts where the last one ended), at a point that moved with the features' last bits, so the
    same weights scored 0.69 in one process and 0.71 in another. The regularised problem has one
    optimum, which Newton-Cholesky reaches in a few steps, each one d x d solve (d = 512 at the
    paper's size): the score is then the model's, and minutes, not hours, at PCam's size.
    """
    folds = int(min(5, np.bincount(labels)[np.unique(labels)].min()))
    probe = LogisticRegressionCV(Cs=C_GRID, cv=max(2, folds), solver="newton-cholesky", max_iter=PROBE_MAX_ITER,
                                 tol=PROBE_TOL, random_state=seed, scoring=cv_scoring(metric, len(np.unique(labels))),
                                 l1_ratios=(0.0,), use_legacy_attributes=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        probe.fit(features, labels)
    return probe, sum(issubclass(w.category, ConvergenceWarning) for w in caught)


def probe_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 n_classes: int, fractions: tuple[float, ...], seeds: tuple[int, ...], metric: str) -> dict:
    """Per fraction: the test metric (mean ± std over seeds below 100%), training size and the Cs chosen."""
    out = {}
    for fraction in fractions:
        runs = []
        for seed in seeds if fraction < 1 else seeds[:1]:
            index = subset(train_y, fraction, seed) if fraction < 1 else np.arange(len(train_y))
            probe, unconverged = fit_probe(train_x[index], train_y[index], seed, metric)
            margins = torch.from_numpy(probe.decision_function(test_x)).double()
            if margins.ndim == 1:  # binary: one margin → two columns for the shared metrics
                margins = torch.stack([-margins / 2, margins / 2], dim=1)
            # a class the train split lacks is never chosen, and ranks every image alike (AUROC 0.5)
            logits = torch.full((len(test_x), n_classes), float("-inf"), dtype=torch.float64)
            logits[:, torch.from_numpy(probe.classes_).long()] = margins
            metrics = classification_metrics(logits, torch.from_numpy(test_y), n_classes)
            runs.append({"score": metrics[metric], "train_images": len(index), "C": float(np.ravel(probe.C_)[0]),
                         "unconverged": unconverged})
        scores = [r["score"] for r in runs]
        out[f"{fraction:g}"] = {"score": float(np.mean(scores)),
                                "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0, "runs": len(runs),
                                "train_images": runs[0]["train_images"], "C": [r["C"] for r in runs],
                                "unconverged_fits": sum(r["unconverged"] for r in runs)}
    return out


def evaluate_linear_probe(encoder: Encoder, task: ProbeTask, batch_size: int) -> dict:
    train, train_y = embed_labelled(encoder, task.train, batch_size, "linear probe")
    if len(np.unique(train_y)) < 2:
        raise DataError(f"linear probe '{task.name}': the train split holds fewer than two classes")
    test, test_y = embed_labelled(encoder, task.test, batch_size, "linear probe")
    train_x, test_x = train.vectors.numpy(), test.vectors.numpy()
    n_classes = len(task.train.classnames)
    return {"metric": task.train.metric, "chance": chance_levels(test_y, n_classes), "test_images": len(test_y),
            "fractions": probe_scores(train_x, train_y, test_x, test_y, n_classes, task.fractions, task.seeds,
                                      task.train.metric),
            "classes": list(task.train.classnames.values()), "unreadable": train.problems + test.problems}
