"""An MLflow pyfunc that embeds images and texts and does zero-shot classification.

Input: a DataFrame with an ``image`` column (base64 JPEG/PNG bytes) and/or a ``text`` column.
Without params it returns the embeddings (and, per row holding both, their cosine similarity).
With ``params={"candidate_labels": [...]}`` it returns, for each image, the softmax probabilities
over the labels and the best label.

It is served to whoever reaches ``mlflow models serve``, so it trusts no input: images are base64
only (a path would read the server's files), each is checked against byte and pixel limits from
its header before any pixel is decoded, rows and bytes per request are capped, and images are
decoded and embedded a batch at a time. A bad input is a 400 that names the row and the problem,
never a traceback or anything about the server.
"""
from __future__ import annotations

import base64
import binascii
import io
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from PIL import Image

from ..params import Section
from ..rgb import to_rgb

ARTIFACT_KEY = "model_dir"
FORMATS = ("JPEG", "PNG")  # what figures come as; other decoders (ICO, ICNS, …) read sizes a header cannot bound


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask of the served model (``register.serve`` in params, logged with it)."""

    max_rows: int = 256
    max_request_bytes: int = 64 * 2**20  # images and texts together, as sent
    max_image_bytes: int = 16 * 2**20  # one decoded base64 image file
    max_image_pixels: int = 40_000_000  # width × height from the header, checked before decoding
    max_request_pixels: int = 512_000_000  # all of a request's images, from their headers: each is decoded whole
    batch_size: int = 32  # images decoded and embedded at a time
    # One text or candidate label. The model reads a text's first context-length tokens, but cleaning and
    # tokenising it cost time and memory by its whole length (~200 bytes of memory per character).
    max_text_chars: int = 100_000

    @classmethod
    def from_params(cls, register: Section) -> "ServeLimits":
        """``register.serve``: any of the fields, each > 0; the rest keep their defaults."""
        serve = register.section("serve")
        return cls(**{key: serve.positive(key) for key in cls.__dataclass_fields__ if key in serve.raw()})

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> "ServeLimits":
        return cls(**{k: int(v) for k, v in (config or {}).items() if k in cls.__dataclass_fields__})

    def as_config(self) -> dict[str, int]:
        return asdict(self)


def bad_input(message: str) -> MlflowException:
    """A 400 for the client; no stack trace travels with it."""
    return MlflowException.invalid_parameter_value(message)


def open_image(value: str, row: int, limits: ServeLimits) -> Image.Image:
    """Row ``row``'s base64 image, its header read and checked against ``limits``; no pixel decoded yet.
    Non-strings never get here: the model's signature makes MLflow refuse them with a 400."""
    if len(value) * 3 // 4 > limits.max_image_bytes:
        raise bad_input(f"row {row}: image is larger than {limits.max_image_bytes} bytes")
    value = "".join(value.split())  # line breaks of wrapped base64 (GNU base64 wraps at 76 columns, MIME too)
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise bad_input(f"row {row}: 'image' is not valid base64 (file paths are not accepted)") from None
    try:
        with warnings.catch_warnings():  # Pillow's own bomb warning: ours below is the stricter check
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except Image.DecompressionBombError:
        raise bad_input(f"row {row}: image exceeds the limit of {limits.max_image_pixels} pixels") from None
    except (OSError, ValueError, SyntaxError):
        raise bad_input(f"row {row}: 'image' is not a decodable image") from None
    width, height = img.size
    if width * height > limits.max_image_pixels:
        raise bad_input(f"row {row}: image of {width}x{height} pixels exceeds the limit of "
                        f"{limits.max_image_pixels} pixels")
    return img


def decode_image(img: Image.Image, row: int, limits: ServeLimits) -> Image.Image:
    """An opened image decoded whole as RGB: a JPEG shrunk while decoding (Pillow's draft) would give other
    pixels, hence other embeddings, than the ones open_clip's preprocess and the evaluate stage compute
    from the same file. A truncated file fails here, as the client's error, not later in the preprocess."""
    try:
        img.load()
        img = to_rgb(img)  # as align made the training figures RGB
    except (OSError, ValueError, SyntaxError):
        raise bad_input(f"row {row}: 'image' is not a decodable image") from None
    if img.width * img.height > limits.max_image_pixels:  # the header said less than the decoder made
        raise bad_input(f"row {row}: image exceeds the limit of {limits.max_image_pixels} pixels")
    return img


def encode_image_file(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _given(value: Any) -> bool:
    """A cell the client filled (pandas pads the missing ones with None or NaN)."""
    return not (value is None or value == "" or isinstance(value, float) and math.isnan(value))


def _check_request(model_input: pd.DataFrame, labels: list[str], limits: ServeLimits) -> None:
    if len(model_input) > limits.max_rows or len(labels) > limits.max_rows:
        raise bad_input(f"{max(len(model_input), len(labels))} rows or candidate labels in one request; the limit "
                        f"is {limits.max_rows}")
    size = sum(len(v) for column in ("image", "text") if column in model_input
               for v in model_input[column].tolist() if isinstance(v, str)) + sum(len(label) for label in labels)
    if size > limits.max_request_bytes:
        raise bad_input(f"the request carries {size} bytes of images and texts; the limit is "
                        f"{limits.max_request_bytes}")
    texts = model_input["text"].tolist() if "text" in model_input else []
    for what, values in (("row", texts), ("candidate label", labels)):
        for i, value in enumerate(values):
            if isinstance(value, str) and len(value) > limits.max_text_chars:
                raise bad_input(f"{what} {i}: a text of {len(value)} characters; the limit is {limits.max_text_chars} "
                                "(the model reads only a text's first tokens: send those)")


class ClipPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from ..evaluate.embed import Encoder

        # On the host, as the serving limits (memory per request, workers) were sized and tested for.
        self.encoder = Encoder.load(Path(context.artifacts[ARTIFACT_KEY]), torch.device("cpu"))
        self.limits = ServeLimits.from_config(context.model_config)

    def _embed_images(self, images: list[Any], rows: list[int]) -> torch.Tensor | None:
        """Embeddings of ``rows``' images, ``batch_size`` at a time. Each image goes through the model's
        preprocess as soon as it is decoded: one full-size image is in memory at a time, and a batch holds
        only model-sized pixels."""
        opened = [open_image(images[i], i, self.limits) for i in rows]
        pixels = sum(img.width * img.height for img in opened)
        if pixels > self.limits.max_request_pixels:  # each is decoded whole: bound the request's work
            raise bad_input(f"the request's images hold {pixels} pixels; the limit is "
                            f"{self.limits.max_request_pixels} (send fewer or smaller images per request)")
        decoded = (decode_image(img, i, self.limits) for i, img in zip(rows, opened))  # one at a time
        return self.encoder.embed_images(decoded, self.limits.batch_size) if rows else None

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        labels = [str(x) for x in (params or {}).get("candidate_labels") or [] if str(x)]
        _check_request(model_input, labels, self.limits)
        images = model_input["image"].tolist() if "image" in model_input else [None] * len(model_input)
        texts = model_input["text"].tolist() if "text" in model_input else [None] * len(model_input)
        rows = [i for i, v in enumerate(images) if _given(v)]
        text_rows = [i for i, v in enumerate(texts) if isinstance(v, str) and v.strip()]
        if not rows and not text_rows:  # a misspelled column, or only empty cells: say so, not 200 and nothing
            raise bad_input("no row holds an 'image' (base64) or a non-empty 'text': the model reads these two "
                            "columns only (MLflow drops any other)")
        empty = sorted(set(range(len(model_input))) - set(rows) - set(text_rows))
        if empty:  # an empty caption among good ones: an answer of None would pass for a result
            raise bad_input(f"row{'s' * (len(empty) > 1)} {', '.join(map(str, empty[:10]))}"
                            f"{' …' * (len(empty) > 10)}: neither an 'image' nor a non-empty 'text'")
        if labels and len(labels) < 2:
            raise bad_input("zero-shot classification needs at least two candidate labels (one always scores 1.0)")
        image_emb = self._embed_images(images, rows)
        out = pd.DataFrame(index=model_input.index)
        if labels:
            return self._zero_shot(out, rows, image_emb, labels)
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
            raise bad_input("zero-shot classification needs at least one row with an image")
        text_emb = self.encoder.embed_texts(labels)
        probs = (self.encoder.logit_scale * image_emb @ text_emb.T).softmax(dim=1)
        prob_col: list[Any] = [None] * len(out)
        label_col: list[Any] = [None] * len(out)
        for j, i in enumerate(rows):
            prob_col[i] = probs[j].tolist()
            label_col[i] = labels[int(probs[j].argmax())]
        out["probabilities"] = prob_col
        out["label"] = label_col
        return out
