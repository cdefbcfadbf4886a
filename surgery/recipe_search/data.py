"""The search's data: a split it measures accuracy on (never trained on), a train split for
calibration and recovery, and a test split it reports once, for the final pick.

``data`` is a built-in task name ("digits", "shapes"), a local imagefolder or a Hub dataset id (read
through the model folder's image processor), or a dict of ``(pixel_values, labels)`` tensors by split
name ("validation" required; "train" and "test" optional).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from surgery.core.history import portable_source
from surgery.errors import ConfigError, SurgeryError

SEARCH_SPLIT, TRAIN_SPLIT, TEST_SPLIT = "validation", "train", "test"
Pair = tuple[torch.Tensor, torch.Tensor]


@dataclasses.dataclass
class SearchData:
    name: str
    search: Pair
    train: Pair | None
    test: Pair | None

    def calibration(self, images: int = 256, batch_size: int = 32) -> list[torch.Tensor]:
        """Batches for calibrating steps: training images when there are, else the search split's."""
        pixels = (self.train or self.search)[0][:images]
        return list(pixels.split(batch_size))

    def describe(self) -> dict[str, Any]:
        sizes = {
            split: len(pair[1])
            for split, pair in (("validation", self.search), ("train", self.train), ("test", self.test))
            if pair is not None
        }
        return {
            "name": portable_source(self.name),
            "images": sizes,  # a local folder by its name
            "calibration": "train" if self.train is not None else "validation (no train split)",
        }


def resolve(data: Any, folder: Path | None, config: Any, train_images: int | None = None) -> SearchData:
    """The splits of ``data`` as tensors (``train_images``: the first that many training images)."""
    if isinstance(data, dict):
        if SEARCH_SPLIT not in data:
            raise ConfigError(
                f"search: data given as tensors needs a '{SEARCH_SPLIT}' split (the one the search "
                f"measures accuracy on); got {sorted(data)}"
            )
        pairs = {name: _pair(name, value) for name, value in data.items()}
        train = pairs.get(TRAIN_SPLIT)
        if train is not None and train_images is not None:
            train = (train[0][:train_images], train[1][:train_images])
        return SearchData("tensors", pairs[SEARCH_SPLIT], train, pairs.get(TEST_SPLIT))
    if not isinstance(data, str):
        raise ConfigError(
            f"search: 'data' got a {type(data).__name__}; give a built-in task ('digits', 'shapes'), an "
            "imagefolder path, a Hub dataset id, or a dict of (pixel_values, labels) by split"
        )
    if folder is None:
        raise ConfigError(
            "search: images by name need the model's image processor; pass the model as its saved folder, "
            "or data as a dict of (pixel_values, labels) tensors"
        )
    from surgery.data.tasks import TASKS, task_tensors

    if data in TASKS:

        def split(name: str, limit: int | None = None) -> Pair:
            return task_tensors(folder, name, data, limit)
    else:
        split = _dataset_split(data, folder, config)
    search = split(SEARCH_SPLIT)
    train = _optional(split, TRAIN_SPLIT, train_images)
    test = _optional(split, TEST_SPLIT)
    return SearchData(data, search, train, test)


def _pair(name: str, value: Any) -> Pair:
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], torch.Tensor)):
        raise ConfigError(f"search: data['{name}'] must be a (pixel_values, labels) pair of tensors")
    pixels, labels = value[0], torch.as_tensor(value[1])
    if len(pixels) != len(labels) or not len(labels):
        raise ConfigError(
            f"search: data['{name}'] has {len(pixels)} images and {len(labels)} labels; give as many of each, at least one"
        )
    return pixels, labels


def _optional(split, name: str, limit: int | None = None) -> Pair | None:
    try:
        return split(name, limit)
    except SurgeryError:
        return None


def _dataset_split(source: str, folder: Path, config: Any):
    from surgery.data.imagesets import batches, load_images
    from surgery.data.processor import load_processor

    processor = load_processor(folder)

    def split(name: str, limit: int | None = None) -> Pair:
        images = load_images(source, name)
        if limit is not None:
            images = images.select(range(min(limit, len(images))))
        loaded = list(batches(images, config, processor, batch_size=256))
        return torch.cat([b["pixel_values"] for b in loaded]), torch.cat([b["labels"] for b in loaded])

    return split
