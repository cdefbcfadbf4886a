"""Nothing written to a model folder names a local path: a folder is pushed as it is, and must not carry
the pusher's directories (base models, teachers and data are recorded by Hub id or by name)."""

from __future__ import annotations

import json

import pytest
import torch

import surgery
from surgery.core.history import portable_source
from surgery.demo.zoo import image_processor

from conftest import supported, tiny

METHODS = sorted(m.name for m in surgery.list_methods())


def _texts(folder):
    return {path.name: path.read_text() for path in folder.rglob("*") if path.suffix in (".json", ".md", ".txt")}


@pytest.mark.parametrize(
    "source, recorded",
    [
        ("google/vit-base-patch16-224", "google/vit-base-patch16-224"),
        ("/home/me/models/my-vit", "my-vit"),
        ("/home/me/models/my-vit/", "my-vit"),
        ("my-vit", "my-vit"),
        ("", None),
        (None, None),
    ],
)
def test_a_source_is_recorded_as_a_hub_id_or_a_name(source, recorded):
    assert portable_source(source) == recorded


def test_an_existing_local_folder_shaped_like_a_hub_id_is_recorded_by_name(tmp_path, monkeypatch):
    (tmp_path / "org" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert portable_source("org/model") == "model"


@pytest.mark.parametrize("plugin", [m for m in METHODS if "vit" in supported(m, ["vit"])])
def test_a_saved_rewritten_model_names_no_local_path(plugin, tmp_path):
    source = tmp_path / "models" / "my-vit"
    tiny("vit").save_pretrained(source)
    image_processor(32).save_pretrained(source)
    model = surgery.load(source)
    batches = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))]
    surgery.apply(model, plugin, calibration=batches)
    out = tmp_path / "out"
    model.save_pretrained(out)
    surgery.card(out, measure=False)
    texts = _texts(out)
    assert "config.json" in texts and "README.md" in texts
    assert not [name for name, text in texts.items() if str(tmp_path) in text]
    steps = json.loads(texts["config.json"])
    assert "my-vit" in json.dumps(steps)  # recorded by name
    assert [s.base_model for s in surgery.history(surgery.load(out))] == ["my-vit"]
