"""An MLflow pyfunc that embeds images and texts and does zero-shot classification.

Input: a DataFrame with an ``image`` column (base64 JPEG/PNG bytes, or a file path) and/or a
``text`` column. Without params it returns the embeddings (and, per row holding both, their cosine
similarity). With ``params={"candidate_labels": [...]}`` it returns, for each image, the softmax
probabilities over the labels and the best label.
"""
from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from PIL import Image

from ..errors import DataError

ARTIFACT_KEY = "model_dir"


def decode_image(value: str) -> Image.Image:
    """A base64-encoded image, or a path to an image file."""
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        data = None
    try:
        if data is not None:
            return Image.open(io.BytesIO(data)).convert("RGB")
        with Image.open(value) as img:
            return img.convert("RGB")
    except OSError as exc:
        raise DataError(f"input image is neither decodable base64 nor a readable file: {str(value)[:60]!r}") from exc


def encode_image_file(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


class ClipPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from ..evaluate.embed import Encoder

        self.encoder = Encoder.load(Path(context.artifacts[ARTIFACT_KEY]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        labels = [str(x) for x in (params or {}).get("candidate_labels") or [] if str(x)]
        images = model_input["image"].tolist() if "image" in model_input else [None] * len(model_input)
        texts = model_input["text"].tolist() if "text" in model_input else [None] * len(model_input)
        rows = [i for i, v in enumerate(images) if isinstance(v, str) and v]
        image_emb = self.encoder.embed_images([decode_image(images[i]) for i in rows]) if rows else None
        out = pd.DataFrame(index=model_input.index)
        if labels:
            return self._zero_shot(out, rows, image_emb, labels)
        text_rows = [i for i, v in enumerate(texts) if isinstance(v, str) and v]
        text_emb = self.encoder.embed_texts([texts[i] for i in text_rows]) if text_rows else None
        image_col: list[Any] = [None] * len(model_input)
        text_col: list[Any] = [None] * len(model_input)
        for j, i in enumerate(rows):
            image_col[i] = image_emb[j].tolist()
        for j, i in enumerate(text_rows):
            text_col[i] = text_emb[j].tolist()
        out["image_embedding"] = image_col
        out["text_embedding"] = text_col
        out["similarity"] = [sum(a * b for a, b in zip(x, y)) if x and y else None for x, y in zip(image_col, text_col)]
        return out

    def _zero_shot(self, out: pd.DataFrame, rows: list[int], image_emb: Any, labels: list[str]) -> pd.DataFrame:
        if image_emb is None:
            raise DataError("zero-shot classification needs at least one row with an image")
        text_emb = self.encoder.embed_texts(labels)
        scale = self.encoder.model.logit_scale.exp()
        probs = (scale * image_emb @ text_emb.T).softmax(dim=1)
        prob_col: list[Any] = [None] * len(out)
        label_col: list[Any] = [None] * len(out)
        for j, i in enumerate(rows):
            prob_col[i] = probs[j].tolist()
            label_col[i] = labels[int(probs[j].argmax())]
        out["probabilities"] = prob_col
        out["label"] = label_col
        return out
