"""Load a model dir for inference and embed images and texts in batches (L2-normalised)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import open_clip
import torch
from PIL import Image
from transformers import AutoTokenizer

from ..model.build import create_model


@dataclass
class Encoder:
    model: torch.nn.Module
    preprocess: Any
    tokenizer: Any
    context_length: int

    @classmethod
    def load(cls, model_dir: Path) -> "Encoder":
        model = create_model(model_dir, load_weights=True).eval()
        preprocess = open_clip.image_transform(model.visual.image_size, is_train=False,
                                               mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        return cls(model, preprocess, tokenizer, tokenizer.model_max_length)

    @property
    def logit_scale(self) -> float:
        """The learnt temperature (exp of the stored log): probabilities are softmax(scale × cosine)."""
        return float(self.model.logit_scale.detach().exp().reshape(-1)[0])

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts), padding="longest", truncation=True, max_length=self.context_length,
                              return_tensors="pt")["input_ids"]

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        chunks = [self.model.encode_text(self.tokenize(texts[i:i + batch_size]), normalize=True)
                  for i in range(0, len(texts), batch_size)]
        return torch.cat(chunks) if chunks else torch.empty(0)

    @torch.no_grad()
    def embed_images(self, images: Iterable[Image.Image], batch_size: int = 64) -> torch.Tensor:
        out, batch = [], []
        for img in images:
            batch.append(self.preprocess(img.convert("RGB")))
            if len(batch) == batch_size:
                out.append(self.model.encode_image(torch.stack(batch), normalize=True))
                batch = []
        if batch:
            out.append(self.model.encode_image(torch.stack(batch), normalize=True))
        return torch.cat(out) if out else torch.empty(0)

    @torch.no_grad()
    def embed_batch(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.model.encode_image(images, normalize=True), self.model.encode_text(tokens, normalize=True))
