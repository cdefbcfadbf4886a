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

from surgery.data.processor import load_processor

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


SPLITS = ("train", "validation", "test")


def digits_splits(seed: int = 0) -> dict[str, Split]:
    """Stratified train / validation / test splits (1149 / 288 / 360), the same for every seed-0
    caller: 20 % of the digits for test, then 20 % of the rest for validation. Models train on
    "train"; choices (recovery recipes, epochs) are made on "validation"; "test" is reported."""
    from sklearn.model_selection import train_test_split

    images, labels = digits_images()
    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=0.2, stratify=labels, random_state=seed)
    train, validation = train_test_split(rest, test_size=0.2, stratify=labels[rest], random_state=seed)
    pick = lambda ids: Split([images[i] for i in ids], labels[ids])  # noqa: E731
    return {"train": pick(train), "validation": pick(validation), "test": pick(test)}


def digits_split(seed: int = 0) -> tuple[Split, Split]:
    """The train and test splits of :func:`digits_splits` (1149 / 360)."""
    splits = digits_splits(seed)
    return splits["train"], splits["test"]


def encode(split: Split, processor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pixel_values, labels)`` tensors through the model's image processor."""
    pixel_values = processor(images=split.images, return_tensors="pt")["pixel_values"]
    return pixel_values, torch.as_tensor(split.labels)


def digits_for(model_folder, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """The digits ``split`` ("train", "validation" or "test") through the image processor saved in ``model_folder``."""
    if split not in SPLITS:
        raise ValueError(f"the built-in digits have the splits {', '.join(SPLITS)}, not {split!r}")
    processor = load_processor(model_folder)
    return encode(digits_splits()[split], processor)
