"""The training image path, made cheap per worker: JPEG draft decode, uint8 out, normalised on the device.

open_clip's training transform decodes every stored JPEG at full size, crops, resizes with
Pillow's bicubic and normalises to float32 in the loader workers, 4-byte pixels through shared
memory. Here the same augmentation (``RandomResizedCrop`` of the paper: scale 0.9–1.0, bicubic)
runs on an image the JPEG decoder already shrank in the DCT domain where that is safe (``draft``:
1/2, 1/4, 1/8 while the image stays large enough for the crop), resizes on torch's uint8 kernel,
the worker hands over uint8 pixels, and ``to_model_input`` normalises them with open_clip's mean
and std on the device, where it costs nothing.
"""
from __future__ import annotations

import functools
import io
from typing import Any, Callable

import numpy as np
import open_clip
import torch
from PIL import Image
from torchvision import transforms

CROP_SCALE = (0.9, 1.0)  # open_clip's default training crop, which the paper used
CROP_RATIO = (3 / 4, 4 / 3)  # torchvision's, which open_clip keeps


def draft_jpeg_decoder(image_size: int) -> Callable[[str, bytes], Any]:
    """A webdataset decoder for ``.jpg``/``.jpeg`` members that decodes at the smallest DCT scale whose
    both sides still hold a square crop of ``CROP_SCALE[0]`` of the area at ``image_size`` (other keys:
    left to the next decoder). Images too small to shrink (most 512-px figures that are not near square)
    decode at full size, as before; a shrunk one's most elongated crop (aspect 3/4) is upscaled ≤ 1.1×."""
    need = int(image_size / CROP_SCALE[0] ** 0.5) + 1

    def decode(key: str, data: bytes) -> Image.Image | None:
        if not key.lower().endswith(("jpg", "jpeg")):
            return None
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (need, need))
        return image.convert("RGB")

    return decode


class TrainImageTransform:
    """open_clip's training augmentation (``RandomResizedCrop``: the same crop draws from torch's RNG,
    bicubic), ending in uint8 CHW instead of normalised float32. The resize runs on torch's uint8
    antialiased bicubic kernel, which matches Pillow's bicubic to ±1 level at ~4× its speed on CPU
    (as the align stage's shrink does)."""

    def __init__(self, image_size: int) -> None:
        self.size = (image_size, image_size)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        top, left, height, width = transforms.RandomResizedCrop.get_params(image, list(CROP_SCALE), list(CROP_RATIO))
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[:, top:top + height, left:left + width]
        with torch.no_grad():  # channels-last uint8: the kernel's fast path
            return torch.nn.functional.interpolate(pixels.unsqueeze(0), size=self.size, mode="bicubic",
                                                   antialias=True)[0].contiguous()


def train_image_transform(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    return TrainImageTransform(image_size)


@functools.cache
def _mean_and_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """open_clip's normalisation on ``device``, copied there once: a copy from host memory per batch
    would make the host wait for the device's queued work every step."""
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1) * 255
    return mean.to(device), std.to(device)


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (on the device) → the float input open_clip's towers expect; float input passes."""
    if images.dtype != torch.uint8:
        return images
    mean, std = _mean_and_std(images.device)
    return (images.float() - mean) / std
