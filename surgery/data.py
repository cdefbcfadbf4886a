"""The built-in dataset: scikit-learn's handwritten digits, as RGB images (ships with the package).

1797 images of 8x8 pixels, 10 classes. Images are given at their native 8x8 size as PIL RGB
images; the model's image processor resizes them (to 32x32 for the default model), as it would any
user's images.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image

LABELS = [str(d) for d in range(10)]


@dataclasses.dataclass
class Split:
    """Images and labels of one split."""

    images: list[Image.Image]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def digits_images() -> tuple[list[Image.Image], np.ndarray]:
    """All 1797 digits as 8x8 RGB PIL images (ink = bright) and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.clip(digits.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    images = [Image.fromarray(p, mode="L").convert("RGB") for p in pixels]
    return images, digits.target.astype(np.int64)


def digits_split(test_fraction: float = 0.2, seed: int = 0) -> tuple[Split, Split]:
    """A stratified train/test split (1437/360 by default), the same for every seed-0 caller."""
    from sklearn.model_selection import train_test_split

    images, labels = digits_images()
    index = np.arange(len(labels))
    train_idx, test_idx = train_test_split(index, test_size=test_fraction, stratify=labels, random_state=seed)
    pick = lambda ids: Split([images[i] for i in ids], labels[ids])  # noqa: E731
    return pick(train_idx), pick(test_idx)


def encode(split: Split, processor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pixel_values, labels)`` tensors through the model's image processor."""
    pixel_values = processor(images=split.images, return_tensors="pt")["pixel_values"]
    return pixel_values, torch.as_tensor(split.labels)


def digits_for(model_folder, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """The digits ``split`` ("train" or "test") through the image processor saved in ``model_folder``."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(model_folder, use_fast=False)
    train, test = digits_split()
    return encode(train if split == "train" else test, processor)
