"""Image classification data through 🤗 datasets: a Hub id, a local imagefolder, or a built-in task
("digits", "shapes": :mod:`surgery.data.tasks`).

``load_images(source, split)`` returns a ``datasets.Dataset`` with an image column and a label
column. ``batches(...)`` turns one (or a pair of tensors ``(pixel_values, labels)``) into a
DataLoader of ``{"pixel_values", "labels"}`` through the model's image processor, mapping the
dataset's class names onto the model's labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from surgery.errors import SurgeryError, did_you_mean

DIGITS = "digits"
IMAGE_COLUMNS = ("image", "img", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "fine_label")


def digits_dataset(split: str = "test"):
    """The built-in digits split ("train": 1149 images, "validation": 288, "test": 360) as a ``datasets.Dataset``."""
    return task_dataset(DIGITS, split)


def task_dataset(name: str, split: str = "test", limit: int | None = None):
    """The built-in task ``name``'s ``split`` (its first ``limit`` images) as a ``datasets.Dataset``."""
    import datasets

    from surgery.data.tasks import task

    built_in = task(name)
    chosen = built_in.split(split, limit)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=built_in.labels)})
    return datasets.Dataset.from_dict({"image": chosen.images, "label": chosen.labels.tolist()}, features=features)


def load_images(source: str, split: str = "test"):
    """``split`` of ``source``: a built-in task ("digits", "shapes"), a local imagefolder
    (``<dir>/<split>/<class>/*.png``) or a Hub dataset id."""
    from surgery.data.tasks import TASKS

    if source in TASKS:
        return task_dataset(source, split)
    import datasets

    local = Path(source).expanduser()
    try:
        if local.is_dir():
            loaded = datasets.load_dataset("imagefolder", data_dir=str(local))
        else:
            loaded = datasets.load_dataset(source)
    except (FileNotFoundError, ConnectionError, ValueError, datasets.exceptions.DatasetNotFoundError) as error:
        kind = "local imagefolder" if local.is_dir() else "Hub dataset"
        raise SurgeryError(
            f"could not load the {kind} '{source}': {error}. Use 'digits' or 'shapes', a folder of "
            f"<split>/<class>/<image> files, or a Hub dataset id (downloads need network)."
        ) from error
    if split not in loaded:
        raise SurgeryError(
            f"'{source}' has no split '{split}'; it has {sorted(loaded)}.{did_you_mean(split, list(loaded))}"
        )
    return loaded[split]


def columns(dataset) -> tuple[str, str]:
    """The image and label column names of a ``datasets.Dataset``."""
    import datasets

    features = dataset.features
    image = next((n for n, f in features.items() if isinstance(f, datasets.Image)), None)
    image = image or next((n for n in IMAGE_COLUMNS if n in features), None)
    label = next((n for n, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    label = label or next((n for n in LABEL_COLUMNS if n in features), None)
    if image is None or label is None:
        raise SurgeryError(f"the dataset needs an image column and a label column; it has {list(features)}")
    return image, label


def label_mapping(dataset, label_column: str, config) -> dict[int, int] | None:
    """Dataset label index -> model label index when the dataset's class names are the model's
    labels in another order; None when the indices already agree. Fails when they cannot match."""
    names = getattr(dataset.features[label_column], "names", None)
    model_names = [config.id2label[i] for i in range(config.num_labels)]
    if names is None or names == model_names:
        return None
    if set(names) <= set(model_names):
        return {i: model_names.index(name) for i, name in enumerate(names)}
    if all(n.startswith("LABEL_") for n in model_names) and len(names) == len(model_names):
        return None  # a model without label names: trust the indices
    raise SurgeryError(
        f"the dataset's classes {names[:10]} are not the model's labels {model_names[:10]}; "
        f"relabel the model (config.id2label) or the dataset"
    )


class TensorImages(Dataset):
    """``(pixel_values, labels)`` tensors as a dataset of ``{"pixel_values", "labels"}``."""

    def __init__(self, pixel_values: torch.Tensor, labels: torch.Tensor):
        if len(pixel_values) != len(labels):
            raise SurgeryError(f"{len(pixel_values)} images but {len(labels)} labels")
        self.pixel_values, self.labels = pixel_values, torch.as_tensor(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}


class ProcessedCollator:
    """Collate raw dataset rows into a batch through the image processor (RGB, labels remapped)."""

    def __init__(self, processor, image_column: str, label_column: str, mapping: dict[int, int] | None):
        self.processor, self.image_column, self.label_column, self.mapping = (
            processor,
            image_column,
            label_column,
            mapping,
        )

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = [row[self.image_column].convert("RGB") for row in rows]
        labels = [int(row[self.label_column]) for row in rows]
        if self.mapping is not None:
            labels = [self.mapping[label] for label in labels]
        pixel_values = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values, "labels": torch.tensor(labels)}


def batches(data, config, processor=None, batch_size: int = 32, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader of ``{"pixel_values", "labels"}`` from a ``datasets.Dataset`` (needs the
    ``processor``), a ``(pixel_values, labels)`` pair, or a torch Dataset of such dicts."""
    if isinstance(data, DataLoader):
        return data
    generator = torch.Generator().manual_seed(seed)
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        data = TensorImages(*data)
    if isinstance(data, Dataset):
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)
    if processor is None:
        raise SurgeryError("a datasets.Dataset of images needs the model's image processor (processor=...)")
    image, label = columns(data)
    collate = ProcessedCollator(processor, image, label, label_mapping(data, label, config))
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate)


def calibration_batches(
    source: str, processor, split: str = "train", limit: int = 256, batch_size: int = 32
) -> list[torch.Tensor]:
    """Batches of ``pixel_values`` for steps that calibrate, from the first ``limit`` images of
    ``split`` of ``source`` (the same specs as ``load_images``: an imagefolder or a Hub dataset id;
    labels are not needed), through the model's image ``processor``."""
    dataset = load_images(source, split)
    features = dataset.features
    import datasets

    image = next((n for n, f in features.items() if isinstance(f, datasets.Image)), None)
    image = image or next((n for n in IMAGE_COLUMNS if n in features), None)
    if image is None:
        raise SurgeryError(f"calibration data '{source}' needs an image column; it has {list(features)}")
    rows = dataset.select(range(min(limit, len(dataset))))[image]
    pixels = processor(images=[picture.convert("RGB") for picture in rows], return_tensors="pt")["pixel_values"]
    return list(pixels.split(batch_size))
