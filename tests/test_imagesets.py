"""Data through datasets (built-in digits, local imagefolders) and the offline evaluate metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny
from PIL import Image

from surgery.data.digits import digits_images, digits_split
from surgery.errors import SurgeryError
from surgery.data.imagesets import (
    batches,
    columns,
    digits_dataset,
    label_mapping,
    load_images,
)
from surgery.evaluation.metrics import load_metric


def write_imagefolder(root, classes=("cat", "dog"), per_class=3, splits=("train", "test")):
    rng = np.random.default_rng(0)
    for split in splits:
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(per_class):
                Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return root


def test_digits_dataset_is_the_same_split_as_the_tensors():
    from surgery.data.digits import digits_splits

    splits = digits_splits()
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [1149, 288, 360]
    counts = sum(np.bincount(splits[s].labels, minlength=10) for s in splits)
    assert counts.tolist() == np.bincount(digits_images()[1], minlength=10).tolist()  # a partition of all 1797
    train, test = digits_split()
    assert len(train) == 1149 and test.labels.tolist() == splits["test"].labels.tolist()
    for split, expected in (("train", train), ("validation", splits["validation"]), ("test", test)):
        data = digits_dataset(split)
        assert len(data) == len(expected) and columns(data) == ("image", "label")
        assert data["label"] == expected.labels.tolist()
        assert np.array_equal(np.asarray(data[5]["image"]), np.asarray(expected.images[5]))


def test_unknown_split_names_the_ones_there(tmp_path):
    with pytest.raises(
        SurgeryError, match="the built-in task 'digits' has the splits train, validation, test, not 'dev'"
    ):
        digits_dataset("dev")
    with pytest.raises(
        SurgeryError, match="the built-in task 'shapes' has the splits .*not 'tets'.*Did you mean 'test'"
    ):
        load_images("shapes", "tets")
    write_imagefolder(tmp_path)
    with pytest.raises(SurgeryError, match="Did you mean 'test'"):
        load_images(str(tmp_path), "tset")


def test_imagefolder_batches_through_the_processor_with_labels_mapped_by_name(tmp_path):
    from surgery.demo.zoo import image_processor

    write_imagefolder(tmp_path, classes=("cat", "dog"))
    data = load_images(str(tmp_path), "train")
    assert len(data) == 6 and data.features["label"].names == ["cat", "dog"]
    from transformers import ViTConfig

    config = ViTConfig(id2label={0: "dog", 1: "cat"}, label2id={"dog": 0, "cat": 1})
    loader = batches(data, config, image_processor(32), batch_size=4)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    names = [data.features["label"].names[i] for i in data["label"][:4]]
    assert batch["labels"].tolist() == [{"dog": 0, "cat": 1}[n] for n in names]


def test_labels_that_do_not_match_the_model_are_refused(tmp_path):
    write_imagefolder(tmp_path, classes=("cat", "dog"))
    data = load_images(str(tmp_path), "train")
    with pytest.raises(SurgeryError, match="not the model's labels"):
        label_mapping(data, "label", tiny("vit").config)  # the digits labels 0-9
    from transformers import ViTConfig

    assert label_mapping(data, "label", ViTConfig(num_labels=2)) is None  # LABEL_0/1: indices are trusted


def test_tensor_pairs_batch_without_a_processor():
    pixels, labels = torch.randn(5, 3, 32, 32), torch.arange(5)
    loader = batches((pixels, labels), tiny("vit").config, batch_size=2)
    got = list(loader)
    assert [len(b["labels"]) for b in got] == [2, 2, 1] and torch.equal(got[0]["pixel_values"], pixels[:2])
    with pytest.raises(SurgeryError, match="image processor"):
        batches(digits_dataset("test"), tiny("vit").config)


def test_mismatched_tensors_and_datasets_without_columns_are_refused():
    from datasets import Dataset

    with pytest.raises(SurgeryError, match="5 images but 4 labels"):
        batches((torch.randn(5, 3, 32, 32), torch.arange(4)), tiny("vit").config)
    with pytest.raises(SurgeryError, match="needs an image column and a label column"):
        columns(Dataset.from_dict({"text": ["a"], "score": [1.0]}))


def test_missing_local_folder_or_hub_dataset_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SurgeryError, match="could not load"):
        load_images("no-such-user/no-such-dataset", "test")


def test_shipped_accuracy_metric_matches_sklearn_offline():
    from sklearn.metrics import accuracy_score

    rng = np.random.default_rng(0)
    predictions, references, weights = rng.integers(0, 4, 50), rng.integers(0, 4, 50), rng.random(50)
    metric = load_metric("accuracy")
    assert metric.compute(predictions=predictions, references=references)["accuracy"] == pytest.approx(
        accuracy_score(references, predictions)
    )
    weighted = metric.compute(predictions=predictions, references=references, sample_weight=weights)["accuracy"]
    assert weighted == pytest.approx(accuracy_score(references, predictions, sample_weight=weights))
    with pytest.raises(SurgeryError, match="Did you mean 'accuracy'"):
        load_metric("acuracy")
