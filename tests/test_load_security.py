"""Loading never opens a pickle and never leaves the model folder: the README's security promise."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from conftest import tiny

import surgery
from surgery.errors import RecipeError


class Touch:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def saved(tmp_path):
    model = surgery.apply(tiny("vit"), ["ggem"])
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    return folder


def index_to(folder, shard):
    keys = list(surgery.load(folder).state_dict())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: shard for k in keys}})
    )


def test_an_index_that_names_a_pickle_is_refused_and_the_pickle_never_opened(saved, tmp_path):
    touched = tmp_path / "pwned"
    with open(saved / "pytorch_model.bin", "wb") as handle:
        pickle.dump(Touch(touched), handle)
    index_to(saved, "pytorch_model.bin")
    os.remove(saved / "model.safetensors")
    with pytest.raises(
        RecipeError, match=r"names the weights file 'pytorch_model.bin'; surgery loads only .safetensors"
    ):
        surgery.load(saved)
    assert not touched.exists()


def test_pickle_weights_alone_are_refused(saved, tmp_path):
    os.remove(saved / "model.safetensors")
    torch.save({}, saved / "pytorch_model.bin")
    with pytest.raises(RecipeError, match="no model.safetensors or model.safetensors.index.json"):
        surgery.load(saved)


@pytest.mark.parametrize("shard", ["../outside/model.safetensors", "/etc/model.safetensors", "sub/model.safetensors"])
def test_an_index_that_leaves_the_folder_is_refused(saved, tmp_path, shard):
    outside = tmp_path / "outside"
    outside.mkdir()
    index_to(saved, shard)
    os.replace(saved / "model.safetensors", outside / "model.safetensors")
    with pytest.raises(RecipeError, match="names the weights file"):
        surgery.load(saved)


def test_a_weights_file_that_links_outside_is_refused(saved, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    os.replace(saved / "model.safetensors", outside)
    os.symlink(outside, saved / "model.safetensors")
    with pytest.raises(RecipeError, match="links outside the model folder"):
        surgery.load(saved)


@pytest.mark.parametrize("content", ["{not json", json.dumps({"weight_map": {}}), json.dumps([1])])
def test_a_broken_index_is_refused(saved, content):
    (saved / "model.safetensors.index.json").write_text(content)
    with pytest.raises(RecipeError, match="index|weight_map"):
        surgery.load(saved)


def test_remote_code_and_pickle_options_are_refused(saved):
    for option, value in (("trust_remote_code", True), ("use_safetensors", False), ("use_safetensors", None)):
        with pytest.raises(RecipeError, match="never runs checkpoint code or reads pickles"):
            surgery.load(saved, **{option: value})
    assert surgery.history(surgery.load(saved, use_safetensors=True))[0].plugin == "ggem"
