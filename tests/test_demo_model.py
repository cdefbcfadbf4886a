"""The built-in default model builder and the model zoo."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoImageProcessor

import surgery
from surgery.data.digits import digits_split, encode
from surgery.demo.model import EVAL_FILE, build_digits_model, default_model
from surgery.errors import ConfigError
from surgery.evaluation.accuracy import accuracy
from surgery.demo.zoo import ARCHITECTURES, build_model, image_processor

from conftest import images


def test_digits_split_is_stratified_and_fixed():
    train, test = digits_split()
    assert (len(train), len(test)) == (1149, 360)
    assert sorted(set(test.labels.tolist())) == list(range(10))
    assert test.images[0].size == (8, 8) and test.images[0].mode == "RGB"
    pixels, labels = encode(test, image_processor(32))
    assert pixels.shape == (360, 3, 32, 32) and float(pixels.min()) >= -1.0 and float(pixels.max()) <= 1.0
    assert torch.equal(labels, torch.as_tensor(digits_split()[1].labels))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_builder_makes_every_architecture(arch):
    model = build_model(arch, "tiny")
    assert model.config.model_type == {
        "vit-msn": "vit_msn",
        "deit-distilled": "deit",
        "dinov2-registers": "dinov2_with_registers",
    }.get(arch, arch)
    assert model(pixel_values=images()).logits.shape == (3, 10)
    assert surgery.get_host().anatomy(model.config.model_type)


def test_builder_rejects_unknown_names():
    with pytest.raises(ConfigError, match=r"unknown architecture 'vitt'.*Did you mean 'vit'\?"):
        build_model("vitt")
    with pytest.raises(ConfigError, match=r"unknown size 'big'"):
        build_model("vit", "big")


def test_build_digits_model_trains_saves_and_reports(tmp_path):
    results = build_digits_model(tmp_path, arch="vit", size="tiny", epochs=8, progress=False)
    saved = json.loads((tmp_path / EVAL_FILE).read_text())
    assert (
        saved == results
        and saved["architecture"] == "vit"
        and "1149 train / 288 validation / 360 test" in saved["split"]
    )
    assert saved["accuracy"] > 0.4  # chance is 0.1; the full default recipe reaches ~95%
    assert (tmp_path / "model.safetensors").exists()
    model = surgery.load(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path, use_fast=False)
    pixels, labels = encode(digits_split()[1], processor)
    assert accuracy(model, pixels, labels) == pytest.approx(saved["accuracy"])
    assert model.config.id2label[3] == "3"


def test_a_task_model_takes_config_values_over_the_recipe(tmp_path):
    """build_task_model's config values replace the recipe's (the benchmarks' shapes Swin: patch 4, windows of 8)."""
    from surgery.demo.model import build_task_model

    results = build_task_model(
        tmp_path, "digits", "swin", size="tiny", epochs=1, limit=64, progress=False, patch_size=2, window_size=2
    )
    config = surgery.load(tmp_path).config
    assert (config.patch_size, config.window_size, config.image_size) == (2, 2, 32)
    assert json.loads((tmp_path / EVAL_FILE).read_text()) == results and results["architecture"] == "swin"


def test_default_model_is_cached(tmp_path, monkeypatch):
    folder = tmp_path / "models" / "digits-vit"
    folder.mkdir(parents=True)
    (folder / EVAL_FILE).write_text(json.dumps({"accuracy": 0.97}))
    monkeypatch.setenv("SURGERY_HOME", str(tmp_path))
    assert default_model("vit") == folder  # found in the cache: nothing is trained


def test_the_default_vit_ships_and_gives_its_recorded_accuracy(tmp_path, monkeypatch):
    from surgery.data.digits import digits_for
    from surgery.demo.model import SHIPPED

    monkeypatch.setenv("SURGERY_HOME", str(tmp_path))
    folder = default_model("vit")  # copied from the package, not trained
    assert folder == tmp_path / "models" / "digits-vit"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", EVAL_FILE):
        assert (folder / name).read_bytes() == (SHIPPED / "digits-vit" / name).read_bytes()
    recorded = json.loads((folder / EVAL_FILE).read_text())
    pixels, labels = digits_for(folder, "test")
    assert accuracy(surgery.load(folder), pixels, labels) == pytest.approx(recorded["accuracy"])
    assert recorded["epochs"] == 30 and "1149 train" in recorded["split"]
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == []


def test_digits_for_names_the_splits_there(tmp_path):
    from surgery.data.digits import digits_for

    with pytest.raises(ValueError, match=r"the built-in digits have the splits train, validation, test, not 'dev'"):
        digits_for(tmp_path, "dev")
