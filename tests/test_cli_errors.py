"""The CLI keeps its promise: bad input prints one `surgery: error:` line (plus indented detail
lines for lists of reasons) and exits 2, never `surgery: unexpected ...`."""

from __future__ import annotations

import json

import pytest
from conftest import tiny

import surgery
from surgery.cli import main


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    surgery.apply(tiny("vit"), ["ggem"]).save_pretrained(root / "model")
    (root / "empty").mkdir()
    (root / "afile").write_text("x")
    garbage = root / "garbage"
    surgery.apply(tiny("vit"), ["ggem"]).save_pretrained(garbage)
    (garbage / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    truncated = root / "truncated"
    surgery.apply(tiny("vit"), ["ggem"]).save_pretrained(truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) - 100])
    wrong = root / "wrong-types"
    surgery.apply(tiny("vit"), ["ggem"]).save_pretrained(wrong)
    config = json.loads((wrong / "config.json").read_text())
    config["quantization_config"]["steps"][0]["targets"] = 5
    (wrong / "config.json").write_text(json.dumps(config))
    (root / "list.json").write_text("[1, 2]")
    for name, change in (
        ("list-config", lambda text: f"[{text}]"),
        ("long-number", lambda text: text.replace('"eps": 1e-06', '"eps": 1' + "0" * 5000)),
    ):
        surgery.apply(tiny("vit"), ["ggem"]).save_pretrained(root / name)
        (root / name / "config.json").write_text(change((root / name / "config.json").read_text()))
    (root / "string-accuracy.json").write_text(json.dumps({"accuracy": "97%"}))
    (root / "nan-accuracy.json").write_text('{"accuracy": NaN}')
    return root


CASES = {
    "plan, no config.json": (["plan", "{root}/empty", "-p", "ggem"], "is not a saved model folder (no config.json)"),
    "apply, no config.json": (["apply", "{root}/empty", "-p", "ggem", "-o", "{root}/o1"], "no config.json"),
    "inspect, no config.json": (["inspect", "{root}/empty"], "no config.json"),
    "eval, no config.json": (["eval", "{root}/empty", "--data", "digits"], "no config.json"),
    "plan, a file": (["plan", "{root}/afile", "-p", "ggem"], "no config.json"),
    "plan, no such folder": (["plan", "./nowhere/at/all", "-p", "ggem"], "no such model folder"),
    "apply -o a file": (
        ["apply", "{root}/model", "-p", "token_merge", "-o", "{root}/afile"],
        "it is a file, not a folder",
    ),
    "bench --repeats 0": (["bench", "{root}/model", "--repeats", "0"], "--repeats got 0; allowed: an integer >= 1"),
    "bench, garbage weights": (["bench", "{root}/garbage"], "is not a readable safetensors file"),
    "bench, truncated weights": (["bench", "{root}/truncated"], "is not a readable safetensors file"),
    "export, garbage weights": (
        ["export", "{root}/garbage", "--to", "onnx", "-o", "{root}/e1"],
        "not a readable safetensors",
    ),
    "export, truncated weights": (["export", "{root}/truncated", "--to", "onnx", "-o", "{root}/e2"], "not a readable"),
    "card --results list": (
        ["card", "{root}/model", "--results", "{root}/list.json", "--no-measure"],
        "must be a JSON object",
    ),
    "card --results string": (
        ["card", "{root}/model", "--results", "{root}/string-accuracy.json", "--no-measure"],
        "results field 'accuracy' must be a finite number, got '97%'",
    ),
    "card --results NaN": (
        ["card", "{root}/model", "--results", "{root}/nan-accuracy.json", "--no-measure"],
        "must be a finite number, got nan",
    ),
    "recover --lr NaN": (
        ["recover", "{root}/model", "--data", "digits", "-o", "{root}/r", "--lr", "NaN"],
        "'lr' got nan",
    ),
    "inspect, wrong field types": (["inspect", "{root}/wrong-types"], "'targets' must be a list of strings, got 5"),
    "plan, config.json a list": (["plan", "{root}/list-config", "-p", "ggem"], "config.json holds a JSON list"),
    "inspect, config.json a list": (["inspect", "{root}/list-config"], "config.json holds a JSON list"),
    "eval, 5,000-digit option": (
        ["eval", "{root}/long-number", "--data", "digits"],
        "config.json is not readable JSON",
    ),
    "recover --checkpoint-dir a file": (
        ["recover", "{root}/model", "--data", "digits", "-o", "{root}/r2", "--checkpoint-dir", "{root}/list.json"],
        "cannot save to {root}/list.json (--checkpoint-dir): it is a file",
    ),
    "export --batch 0": (
        ["export", "{root}/model", "--to", "onnx", "-o", "{root}/e3", "--batch", "0"],
        "export: 'batch' got 0; allowed: an integer >= 1",
    ),
    "push ../x": (["push", "{root}/model", "../x", "--token", "t"], "is not a Hub repository id"),
    "push a/b/c": (["push", "{root}/model", "a/b/c", "--token", "t"], "is not a Hub repository id"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line_and_exit_2(folders, capsys, case):
    argv, message = CASES[case]
    assert main([a.format(root=folders) for a in argv]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("surgery: note:")]
    assert err[0].startswith("surgery: error: ") and all(line.startswith("  ") for line in err[1:]), err
    assert message.format(root=folders) in "\n".join(err) and len("\n".join(err)) < 1000, err
