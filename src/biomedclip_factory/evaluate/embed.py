"""Load a model dir for inference and embed images and texts in batches (L2-normalised).

The towers run on the GPU when there is one, in fp32 or under bf16 autocast (``precision``: the
paper profiles' ``evaluate.precision``, as open_clip_train evaluates under its training autocast),
whatever model is scored, and datasets are decoded by DataLoader workers, streamed: a zero-shot set is
never held decoded in memory. The embeddings come back as fp32 on the host either way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from open_clip.transform import PreprocessCfg, image_transform_v2
import torch
from PIL import Image
from transformers import AutoTokenizer

from ..model.build import create_model
from ..io import relative_to_cwd
from ..model.text import tokenize
from ..rgb import to_rgb, unreadable_because

ImageSource = Path | np.ndarray  # an image file, or an HxW(x3) uint8 array (MedMNIST-style .npz)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def shown(source: ImageSource) -> str:
    """An image as a report names it (a file relative to the project: committed metrics read alike
    in every checkout)."""
    return "an array image" if isinstance(source, np.ndarray) else relative_to_cwd(Path(source))


def open_rgb(source: ImageSource) -> Image.Image:
    """RGB as align makes a figure RGB (transparency on white, wide images stretched)."""
    if isinstance(source, np.ndarray):
        return to_rgb(Image.fromarray(source))
    with Image.open(source) as img:
        img.load()
        return to_rgb(img)


@dataclass(frozen=True)
class Embedded:
    vectors: torch.Tensor  # one row per readable image, in input order
    kept: list[int]  # their positions in the input
    problems: list[str]  # "<file>: <why>" for each image that could not be decoded (skipped)


class _Decoded(torch.utils.data.Dataset):
    """Decoding and preprocessing in the DataLoader's workers; an unreadable image is reported, not raised."""

    def __init__(self, sources: Sequence[ImageSource], preprocess: Any) -> None:
        self.sources, self.preprocess = sources, preprocess

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return i, self.preprocess(open_rgb(self.sources[i])), ""
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            return i, None, f"{shown(self.sources[i])}: {unreadable_because(exc)}"


def _collate(rows: list[tuple[int, torch.Tensor | None, str]]) -> tuple[list[int], torch.Tensor | None, list[str]]:
    good = [(i, t) for i, t, _ in rows if t is not None]
    return [i for i, _ in good], torch.stack([t for _, t in good]) if good else None, [p for *_, p in rows if p]


@dataclass
class Encoder:
    model: torch.nn.Module
    preprocess: Any
    tokenizer: Any
    context_length: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    workers: int = 0  # DataLoader workers decoding datasets (0: in this process)
    precision: str = "fp32"  # or "amp_bf16": bf16 autocast over the fp32 weights (``tasks.PRECISIONS``)

    @classmethod
    def load(cls, model_dir: Path, device: torch.device | None = None) -> "Encoder":
        device = device or default_device()
        model = create_model(model_dir, load_weights=True).eval().to(device)
        # The model's own preprocess_cfg, as open_clip's create_model_and_transforms builds its val
        # transform: another model in evaluate.models may resize, interpolate or normalise differently.
        preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        return cls(model, preprocess, tokenizer, tokenizer.model_max_length, device)

    @property
    def logit_scale(self) -> float:
        """The learnt temperature (exp of the stored log): probabilities are softmax(scale × cosine)."""
        return float(self.model.logit_scale.detach().exp().reshape(-1)[0])

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return tokenize(self.tokenizer, texts, self.context_length)["input_ids"]

    def _run(self, encode: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "amp_bf16"):
            return encode(x, normalize=True).float().cpu()

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        chunks = [self._run(self.model.encode_text, self.tokenize(texts[i:i + batch_size]))
                  for i in range(0, len(texts), batch_size)]
        return torch.cat(chunks) if chunks else torch.empty(0)

    @torch.no_grad()
    def embed_images(self, images: Iterable[Image.Image], batch_size: int = 64) -> torch.Tensor:
        """Images in memory, each preprocessed as it comes (a generator holds one full-size image at a time);
        datasets go through ``embed_files``."""
        out, batch = [], []
        for img in images:
            batch.append(self.preprocess(to_rgb(img)))
            if len(batch) == batch_size:
                out.append(self._run(self.model.encode_image, torch.stack(batch)))
                batch = []
        if batch:
            out.append(self._run(self.model.encode_image, torch.stack(batch)))
        return torch.cat(out) if out else torch.empty(0)

    @torch.no_grad()
    def embed_files(self, sources: Sequence[ImageSource], batch_size: int = 64) -> Embedded:
        """A dataset's images, decoded on the fly by ``workers``; unreadable ones are skipped and named."""
        loader = torch.utils.data.DataLoader(_Decoded(sources, self.preprocess), batch_size=batch_size,
                                             num_workers=self.workers, collate_fn=_collate,
                                             pin_memory=self.device.type == "cuda")
        vectors, kept, problems = [], [], []
        for indices, pixels, bad in loader:
            problems += bad
            if pixels is not None:
                vectors.append(self._run(self.model.encode_image, pixels))
                kept += indices
        return Embedded(torch.cat(vectors) if vectors else torch.empty(0), kept, problems)

    @torch.no_grad()
    def embed_batch(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(self.model.encode_image, images), self._run(self.model.encode_text, tokens)
