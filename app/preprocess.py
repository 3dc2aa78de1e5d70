"""The one preprocessing implementation shared by training, export and serving.

A decoded image (``app.decode``: a 2-D float32 array of display intensities,
brighter = denser, any range) becomes a model input tensor in four steps:

1. pad to a square with the image's own minimum, centred, so anatomy keeps
   its aspect ratio;
2. resize to ``size`` x ``size`` with Pillow's antialiased bilinear filter
   on float32 data (no 8-bit round trip);
3. intensity normalisation: clip to the 0.5th and 99.5th percentiles of the
   resized image and rescale to [0, 1], which makes the result independent of
   bit depth (an 8-bit and a 16-bit rendering of one picture agree);
4. replicate to three channels and apply the per-channel mean / std
   normalisation, giving float32 ``(3, size, size)`` in CHW layout.

Any change to these steps must bump ``PREPROCESS_VERSION``: the service refuses
a model whose contract names another version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

PREPROCESS_VERSION = "vlkd-pre-1"

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5


@dataclass(frozen=True)
class PreprocessConfig:
    """What a model expects as input; read from the model's contract."""

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 2048:
            raise ValueError(f"input size must be 16..2048 px, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need exactly three values (one a channel)")
        if min(self.std) <= 0:
            raise ValueError(f"std values must be positive, got {self.std}")


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Centre ``image`` on a square canvas filled with its minimum value."""
    height, width = image.shape
    side = max(height, width)
    if height == width:
        return image

    canvas = np.full((side, side), image.min(), dtype=np.float32)
    top = (side - height) // 2
    left = (side - width) // 2
    canvas[top : top + height, left : left + width] = image

    return canvas


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a square float32 image to ``size`` x ``size`` (antialiased)."""
    if image.shape == (size, size):
        return image.astype(np.float32, copy=False)

    resized = Image.fromarray(image.astype(np.float32, copy=False), mode="F").resize(
        (size, size), resample=Image.Resampling.BILINEAR
    )

    return np.asarray(resized, dtype=np.float32)


def normalise_intensity(image: np.ndarray) -> np.ndarray:
    """Clip to robust percentiles and rescale to [0, 1]; constant images give 0."""
    low, high = np.percentile(image, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if high - low < 1e-6:
        return np.zeros_like(image, dtype=np.float32)

    scaled = (np.clip(image, low, high) - low) / (high - low)

    return scaled.astype(np.float32)


def to_model_layout(image01: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Replicate a [0, 1] image to three channels and mean / std normalise (CHW)."""
    mean = np.asarray(config.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(config.std, dtype=np.float32).reshape(3, 1, 1)
    channels = np.broadcast_to(image01[None, :, :], (3, *image01.shape))

    return ((channels - mean) / std).astype(np.float32)


def preprocess(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Turn one decoded 2-D image into a float32 ``(3, size, size)`` tensor."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")

    square = pad_to_square(image.astype(np.float32, copy=False))
    small = resize(square, config.size)
    image01 = normalise_intensity(small)

    return to_model_layout(image01, config)


def preprocess_batch(
    images: Sequence[np.ndarray], config: PreprocessConfig
) -> np.ndarray:
    """Stack preprocessed images into a float32 ``(N, 3, size, size)`` batch."""
    return np.stack([preprocess(image, config) for image in images])
