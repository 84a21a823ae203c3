"""The versions of the libraries whose behaviour each stage's output holds, as installed here.

``pip install -U pillow`` changes no file dvc.yaml lists, so ``dvc repro`` kept pairs decoded and
weights trained by the old versions and called them current (align's journal started afresh, but
DVC never ran align to find out). The ``inputs`` stage, run every time, writes these versions into
each stage's record, which is that stage's dep: an upgrade reruns the stages it can change, and no
other. The installed versions count, not constraints.txt's pins: a GPU host or an image may hold
other builds than the pins name.
"""
from __future__ import annotations

import importlib.metadata

# Their output bytes (JPEG encoding, resizing, pHash and the scipy DCT under it, JATS parsing) are what an
# aligned article holds.
DECODERS = ("pillow", "torch", "imagehash", "scipy", "numpy", "lxml")
# What builds, feeds, runs and saves the model: its weights and its scores depend on each (ftfy through
# open_clip's caption cleaning, which changes ~6% of captions).
_MODEL = ("torch", "torchvision", "open_clip_torch", "timm", "transformers", "tokenizers", "ftfy", "safetensors",
          "numpy", "pillow", "webdataset")
RESULT_LIBRARIES: dict[str, tuple[str, ...]] = {
    "scrape": ("lxml",),  # parses the listings and the article metadata its manifest holds
    "align": (*DECODERS, "pyarrow"),  # pyarrow writes the pairs table, its own version inside
    "shard": ("numpy", "pyarrow"),
    "tokenizer": ("tokenizers", "transformers", "open_clip_torch", "ftfy", "pyarrow", "pandas"),
    "pretrain": (*_MODEL, "deepspeed"),
    "evaluate": (*_MODEL, "scikit-learn", "scipy", "pyarrow", "pandas"),  # scipy: the linear probe's solver
}  # register runs every time: it needs no record
# Imported by stages, yet no output byte depends on their version: they read settings, track, orchestrate,
# fetch bytes as they are or report progress.
NEUTRAL = frozenset({"PyYAML", "mlflow", "mlflow-skinny", "mlflow-tracing", "prefect", "prefect-dask", "distributed",
                     "psutil", "requests", "tqdm", "packaging"})


def release(name: str) -> str | None:
    """The installed release of ``name`` without its build label (``2.14.1`` for ``2.14.1+cu128``): a CUDA and a
    CPU build of one release run the same CPU code, and a workspace pulled onto a GPU host must not redo
    align for it. ``None``: not installed (the stage itself reports that on import)."""
    try:
        return importlib.metadata.version(name).split("+", 1)[0]
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_versions(stage: str) -> dict[str, str | None]:
    """Library → its installed release, for each library ``stage``'s output depends on."""
    return {name: release(name) for name in RESULT_LIBRARIES[stage]}
