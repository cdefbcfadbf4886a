"""Export never destroys or bypasses: not into the model's folder, not over other files, nothing
moved in before it is complete, and non-finite outputs fail the check."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny

import surgery
from surgery.cli import main
from surgery.publish.export import REPORT, ExportError, export


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "model"
    surgery.apply(tiny("vit"), ["ggem"]).save_pretrained(folder)
    return folder


def test_export_into_the_model_folder_is_refused_and_leaves_it_loading(saved, capsys):
    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    assert main(["export", str(saved), "--to", "onnx", "-o", str(saved)]) == 2
    assert "is a model folder; export into another folder" in capsys.readouterr().err
    assert main(["export", str(saved), "--to", "onnx", "-o", str(saved), "--overwrite"]) == 2
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before
    assert surgery.history(surgery.load(saved))[0].plugin == "ggem"


def test_export_over_files_it_did_not_write_needs_overwrite(saved, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"holds files an export did not write \(notes.txt\)"):
        export(saved, out, to="onnx")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    export(saved, out, to="onnx", overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.onnx").exists()
    export(saved, out, to="openvino", overwrite=True)  # the files of the earlier export are replaced, not mixed
    assert not (out / "model.onnx").exists() and (out / "openvino_model.xml").exists()
    assert json.loads((out / REPORT).read_text())["format"] == "openvino"


def test_re_exporting_into_an_export_folder_is_allowed_and_keeps_a_users_onnx_folder(saved, tmp_path):
    out = tmp_path / "ov"
    (out / "_onnx").mkdir(parents=True)
    (out / "_onnx" / "model.onnx").write_text("not ours")
    with pytest.raises(ExportError, match=r"holds files an export did not write \(_onnx\)"):
        export(saved, out, to="openvino")
    assert (out / "_onnx" / "model.onnx").read_text() == "not ours"
    export(saved, tmp_path / "fresh", to="openvino")
    export(saved, tmp_path / "fresh", to="openvino")  # again into its own export
    assert sorted(p.name for p in (tmp_path / "fresh").parent.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_outputs_fail_the_check_and_the_report_stays_json(saved, tmp_path, monkeypatch, bad):
    import surgery.publish.export as exporting

    def broken(path, pixels):
        out = np.zeros((pixels.shape[0], 10), dtype=np.float32)
        out[0, 0] = bad
        return out

    monkeypatch.setattr(exporting, "run_onnx", broken)
    int8 = surgery.apply(surgery.load(saved), ("quantize", {"activations": "none"}))  # no tolerance, still checked
    for name, model in (("float", surgery.load(saved)), ("int8", int8)):
        with pytest.raises(ExportError, match=r"non-finite logits \(NaN or inf\)"):
            export(model, tmp_path / name, to="onnx")
        report = json.loads((tmp_path / name / REPORT).read_text())  # strict JSON (no NaN)
        assert report["finite"] is False and report["max_abs_diff"] is None


def test_the_report_records_the_instruction_set(saved, tmp_path):
    import torch

    export(saved, tmp_path / "out", to="onnx")
    cpu = json.loads((tmp_path / "out" / REPORT).read_text())["cpu"]
    assert cpu["torch_capability"] == torch.backends.cpu.get_cpu_capability() and "int8_flags" in cpu


def test_export_without_the_export_extra_says_what_to_install(saved, tmp_path, monkeypatch, capsys):
    import builtins

    real = builtins.__import__

    def no_optimum(name, *args, **kwargs):
        if name.startswith("optimum"):
            raise ModuleNotFoundError("No module named 'optimum'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_optimum)
    import importlib

    monkeypatch.setattr(importlib, "import_module", lambda name: no_optimum(name, fromlist=["x"]))
    assert main(["export", str(saved), "--to", "onnx", "--exporter", "optimum", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == 'surgery: error: export needs optimum, which is not installed: pip install "vision-surgery[export]"'
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("to, runner", [("onnx", "run_onnx"), ("openvino", "run_openvino")])
def test_an_export_the_runtime_cannot_run_is_an_export_error_and_saves_nothing(to, runner, tmp_path, monkeypatch):
    import surgery.publish.export as exporting

    def refuses(path, pixels):  # as OpenVINO refused a DINOv2 token reduction: a shape check at inference
        raise RuntimeError("[CPU] TopK node with name '/x/TopK' K (63) exceeds the axis dimension (32).")

    monkeypatch.setattr(exporting, runner, refuses)
    model = surgery.apply(tiny("vit"), "token_merge")
    with pytest.raises(
        ExportError,
        match=r"the .* export of ViTForImageClassification \(token_merge\) was written but "
        r"does not run in .* on a batch of \d+: .*K \(63\) exceeds the axis dimension",
    ):
        export(model, tmp_path / "out", to=to)
    assert not (tmp_path / "out").exists()
