"""What gets published: only the model's own files, never a folder that does not load, and the round
trip a user does: push, then load by Hub id, with equal logits."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import images, tiny
from fakehub import FakeHub
from test_cards_and_push import TOKEN

import surgery
from surgery.cli import main
from surgery.publish.hub import PushError, publishable_files, push


@pytest.fixture
def recovered(tmp_path):
    """A folder as `surgery recover` leaves it, plus an export and the debris of other tools."""
    folder = tmp_path / "model"
    model = surgery.apply(tiny("vit"), ["ggem"])
    model.save_pretrained(folder)
    for name in (
        "checkpoints/epoch-1/optimizer.safetensors",
        "checkpoints/epoch-1/random_states_0.pkl",
        "onnx/model.onnx",
        "onnx/export_report.json",
        "onnx/config.json",
        "onnx/notes.pkl",
        "surgery_results.json",
        "recovery_log.json",
        "README.md",
        "tmp_xyz.safetensors",
        "optimizer.pt",
    ):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("{}")
    return folder


def test_publishable_files_are_the_model_its_card_results_and_exports(recovered):
    files, skipped = publishable_files(recovered)
    assert files == [
        "README.md",
        "config.json",
        "model.safetensors",
        "onnx/config.json",
        "onnx/export_report.json",
        "onnx/model.onnx",
        "recovery_log.json",
        "surgery_results.json",
    ]
    assert skipped == ["checkpoints/", "onnx/notes.pkl", "optimizer.pt", "tmp_xyz.safetensors"]


def test_push_uploads_only_the_model_files_and_the_cli_says_what_it_skipped(recovered, tmp_path, online, capsys):
    with FakeHub(tmp_path / "hub", token=TOKEN) as hub:
        os.environ["HF_ENDPOINT"] = hub.url
        try:
            assert main(["push", str(recovered), "me/m", "--token", TOKEN]) == 0
        finally:
            del os.environ["HF_ENDPOINT"]
        assert sorted(hub.commits[0]["files"]) == publishable_files(recovered)[0]
        assert not (hub.repo("me/m") / "checkpoints").exists()
    err = capsys.readouterr().err
    assert "not uploading checkpoints/, onnx/notes.pkl, optimizer.pt, tmp_xyz.safetensors" in err


@pytest.mark.parametrize("damage", ["no weights", "truncated weights", "recipe without its plugin"])
def test_push_refuses_a_folder_that_does_not_load(recovered, tmp_path, online, damage):
    import json

    if damage == "no weights":  # an interrupted plain save: config.json and a temp file
        os.remove(recovered / "model.safetensors")
    elif damage == "truncated weights":
        data = (recovered / "model.safetensors").read_bytes()
        (recovered / "model.safetensors").write_bytes(data[: len(data) // 2])
    else:
        config = json.loads((recovered / "config.json").read_text())
        config["quantization_config"]["steps"][0]["plugin"] = "missing_plugin"
        (recovered / "config.json").write_text(json.dumps(config))
    with FakeHub(tmp_path / "hub", token=TOKEN) as hub:
        with pytest.raises(PushError, match="does not load with surgery.load, so it is not pushed"):
            push(recovered, "me/m", token=TOKEN, endpoint=hub.url)
        assert hub.commits == []


@pytest.mark.parametrize("repo_id", ["../x", "a/b/c", "me/", "me/x y", "me/x" + "y" * 200])
def test_push_refuses_repo_ids_that_are_not_ids(recovered, repo_id, capsys):
    assert main(["push", str(recovered), repo_id, "--token", TOKEN]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("surgery: error: push:") and "is not a Hub repository id" in err[-1]


LOAD_BY_ID = textwrap.dedent("""
    import sys, torch
    import surgery
    from transformers import AutoModelForImageClassification
    x = torch.load(sys.argv[1])
    a = surgery.load("me/by-id")(pixel_values=x).logits
    b = AutoModelForImageClassification.from_pretrained("me/by-id")(pixel_values=x).logits
    torch.save(torch.stack([a, b]), sys.argv[2])
""")


def test_push_then_load_by_hub_id_gives_the_same_logits(tmp_path, online):
    model = surgery.apply(tiny("vit"), [("token_merge", {"r": 2}), "ggem", ("bivit", {"parts": "mlp"})])
    model.eval().save_pretrained(tmp_path / "m")
    x = images()
    torch.save(x, tmp_path / "x.pt")
    with FakeHub(tmp_path / "hub", token=TOKEN) as hub:
        push(tmp_path / "m", "me/by-id", token=TOKEN, endpoint=hub.url)
        env = dict(
            os.environ,
            HF_ENDPOINT=hub.url,
            HF_HUB_OFFLINE="0",
            HF_HOME=str(tmp_path / "hf-home"),
            HF_HUB_DISABLE_UPDATE_CHECK="1",
            HF_TOKEN=TOKEN,
        )
        script = tmp_path / "load.py"
        script.write_text(LOAD_BY_ID)
        result = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "x.pt"), str(tmp_path / "out.pt")],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert hub.unknown == []
    via_load, via_plain = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        expected = model(pixel_values=x).logits
    assert torch.equal(via_load, expected) and torch.equal(via_plain, expected)
