"""The built-in tasks, by name: ``digits`` (the default) and ``shapes`` (the proving ground).

A task gives its labels, its fixed train / validation / test splits, the image size its model is
built for, and a description for cards and reports. ``task_tensors(folder, split, task)`` returns a
split through the image processor saved with a model, as every user's images would go.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from surgery.data.digits import Split, encode
from surgery.data.processor import load_processor
from surgery.errors import ConfigError, did_you_mean

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    labels: list[str]
    image_size: int
    description: str
    _split: Callable[[str, int | None], Split]
    calibration_images: int | None = None  # training images that calibrating steps see (None: the whole split)

    def split(self, split: str = "test", limit: int | None = None) -> Split:
        """``split`` ("train", "validation" or "test") as PIL images and labels (the first ``limit``)."""
        if split not in SPLITS:
            raise ConfigError(
                f"the built-in task '{self.name}' has the splits {', '.join(SPLITS)}, not '{split}'."
                + did_you_mean(split, SPLITS)
            )
        return self._split(split, limit)


def _digits(split: str, limit: int | None) -> Split:
    from surgery.data.digits import digits_splits

    chosen = digits_splits()[split]
    return chosen if limit is None else Split(chosen.images[:limit], chosen.labels[:limit])


def _shapes(split: str, limit: int | None) -> Split:
    from surgery.data.shapes import shapes_split

    return shapes_split(split, limit)


def _tasks() -> dict[str, Task]:
    from surgery.data import digits, shapes

    return {
        "digits": Task("digits", digits.LABELS, 32, "sklearn digits (8x8 upsampled to 32x32 RGB)", _digits),
        shapes.NAME: Task(shapes.NAME, shapes.LABELS, shapes.SIZE, shapes.describe(), _shapes, calibration_images=256),
    }


TASKS = _tasks()
DEFAULT_TASK = "digits"


def task(name: str) -> Task:
    """The built-in task ``name``; a clear error naming the tasks there are."""
    if name not in TASKS:
        raise ConfigError(
            f"unknown built-in task '{name}'; choose from {', '.join(TASKS)}." + did_you_mean(name, TASKS)
        )
    return TASKS[name]


def task_tensors(
    model_folder, split: str = "test", name: str = DEFAULT_TASK, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pixel_values, labels)`` of task ``name``'s ``split`` through the image processor saved in ``model_folder``."""
    chosen = task(name).split(split, limit)
    return encode(chosen, load_processor(model_folder))
