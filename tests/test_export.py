"""Every plugin, alone and in the combinations users try, exports to ONNX and OpenVINO and matches
PyTorch, or is refused up front with its reason."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys

import numpy as np
import torch
import pytest

import surgery
from surgery.cli import main
from surgery.evaluation.accuracy import predict_logits
from surgery.publish.export import RECIPE, REPORT, TOLERANCE, ExportError, export, run_onnx, run_openvino
from surgery.demo.zoo import image_processor

from conftest import images, takes, tiny, untie

AGENT = ("agent_attention", {"agents": 4})
TOME = ("token_merge", {"r": 8})
W1A32 = ("bivit", {"activations": "full"})
OPTIONS = {
    "token_merge": {"r": 8},
    "agent_attention": {"agents": 4},
    "token_transform": {"r": 8},
    "token_prune": {"flops": 0.6},
}
# every installed plugin whose export is exact (the registry: a new one is tested here unedited; quantize's
# int8 rounding is checked below, by class agreement), bivit's W1A32 too, and combinations
SINGLE = {
    method.name: [(method.name, OPTIONS.get(method.name, {}))]
    for method in surgery.list_methods()
    if method.export_exact
}
SINGLE["bivit-W1A32"] = [W1A32]
FP32 = {
    **SINGLE,
    "token_merge+ggem": [TOME, "ggem"],
    "token_prune+ggem": [("token_prune", {"flops": 0.6}), "ggem"],
    "agent_attention+bivit-mlp": [AGENT, ("bivit", {"parts": "mlp"})],
    "castling+ggem+bivit-W1A32": ["castling", "ggem", W1A32],
}


def _refusals(steps: list, to: str) -> list[tuple[str, str]]:
    """(plugin, reason) for each step whose method refuses exporting to ``to`` with its options."""
    host, found = surgery.get_host(), []
    for spec in steps:
        name, options = (spec, {}) if isinstance(spec, str) else spec
        reason = host.method(name).export_refusal(to, host.method(name).make_config(options).to_dict())
        if reason:
            found.append((name, reason))
    return found


# every case on the first families; each plugin alone on the others; what a family refuses is left out.
# OpenVINO converts the graph ONNX Runtime checks, at 4-8 s a case on two busy cores: each plugin alone on ViT
# runs in the suite, the combinations and the other families in `pytest -m slow tests/test_export.py` (Swin's
# windows reach OpenVINO in the suite through test_unmerge_windows and test_bivit)
FIRST = ("vit", "deit-distilled", "swin", "dinov2-registers")
OPENVINO = ("vit",)


def _case(name: str, arch: str, to: str):
    slow = to == "openvino" and (arch not in OPENVINO or name not in SINGLE)
    return pytest.param(name, arch, to, marks=pytest.mark.slow) if slow else (name, arch, to)


CASES = [
    _case(name, arch, to) for arch in FIRST for name in FP32 for to in ("onnx", "openvino") if takes(arch, FP32[name])
]
CASES += [
    _case(name, arch, to)
    for arch in ("vit-msn", "swinv2", "dinov2", "beit", "data2vec-vision")
    for name in SINGLE
    for to in ("onnx", "openvino")
    if takes(arch, FP32[name])
]
IDS = ["-".join(case.values if hasattr(case, "values") else case) for case in CASES]


@pytest.mark.parametrize("name, arch, to", CASES, ids=IDS)
def test_fp32_exports_match_pytorch_or_are_refused(name, arch, to, tmp_path):
    model = surgery.apply(untie(tiny(arch)), FP32[name], calibration=[images(4, seed=8)])  # ecoformer learns its hash
    refusals = _refusals(FP32[name], to)
    if refusals:
        plugin, reason = refusals[0]
        with pytest.raises(ExportError, match=rf"cannot export to {to}:\n  - {plugin}: {re.escape(reason)}"):
            export(model, tmp_path, to=to)
        assert not any(tmp_path.iterdir())  # refused before writing anything
        return
    result = export(model, tmp_path, to=to)  # raises if beyond 1e-4 (ONNX) / 1e-3 (OpenVINO) of the logits' scale
    report = json.loads((tmp_path / REPORT).read_text())
    # the export's own check ran the written file on a batch of 3 (traced with 2: the batch axis is dynamic)
    assert report["inputs"][0] == 3 and report["max_abs_diff"] == result.max_abs_diff
    assert report["finite"] and result.max_abs_diff <= report["tolerance"] < 2 * TOLERANCE[to]  # tiny logits: absolute


INT8 = {
    "quantize": ["quantize"],
    "ggem+quantize": ["ggem", "quantize"],
    "token_merge+quantize": [("token_merge", {"r": 4}), "quantize"],
    "agent_attention+quantize": [("agent_attention", {"agents": 16}), "quantize"],
    "castling+quantize": ["castling", "quantize"],
    "quantize-attention": [("quantize", {"attention": "int8"})],
    "token_merge+quantize-attention": [("token_merge", {"r": 4}), ("quantize", {"attention": "int8"})],
    # everything NNCF's transformer preset quantizes: an int8 Conv (QDQ on the pixels) and an int8 head too
    "quantize-every-layer": [("quantize", {"attention": "int8", "patch_embed": "int8", "classifier": "int8"})],
}


@pytest.mark.parametrize("name", INT8)
@pytest.mark.parametrize("to", ["onnx", "openvino"])
def test_int8_exports_agree_with_pytorch_on_the_digits(digits, name, to, tmp_path):
    folder, train_pixels, pixels, _ = digits
    model = surgery.apply(surgery.load(folder), INT8[name], calibration=train_pixels[:256].split(32))
    result = export(model, tmp_path, to=to, source=folder)
    assert result.quantized
    run = run_onnx if to == "onnx" else run_openvino
    exported = run(result.path, pixels.numpy()).argmax(-1)
    agreement = (exported == predict_logits(model, pixels).argmax(-1).numpy()).mean()
    assert agreement >= 0.99, agreement


@pytest.mark.slow  # its own digits model (two minutes of training on two cores); the tiny models' parity covers registers
@pytest.mark.parametrize("name", ["quantize", "token_merge+quantize"])
@pytest.mark.parametrize("to", ["onnx", "openvino"])
def test_int8_exports_of_dinov2_with_registers_agree_with_pytorch(digits_dinov2, name, to, tmp_path):
    folder, train_pixels, pixels, _ = digits_dinov2
    model = surgery.apply(surgery.load(folder), INT8[name], calibration=train_pixels[:256].split(32))
    result = export(model, tmp_path, to=to, source=folder)
    exported = (run_onnx if to == "onnx" else run_openvino)(result.path, pixels.numpy()).argmax(-1)
    agreement = (exported == predict_logits(model, pixels).argmax(-1).numpy()).mean()
    assert result.quantized and agreement >= 0.99, agreement


@pytest.mark.parametrize(
    "to, runtime",
    [
        ("onnx", "optimum.onnxruntime.ORTModelForImageClassification"),
        ("openvino", "optimum.intel.OVModelForImageClassification"),
    ],
)
def test_exported_folders_load_in_optimum_without_surgery(to, runtime, tmp_path):
    import importlib.util

    if importlib.util.find_spec("optimum") is None or importlib.util.find_spec(runtime.rsplit(".", 1)[0]) is None:
        pytest.skip(
            f"{runtime.rsplit('.', 1)[0]} is not installed in this set (optimum-onnx needs transformers < 4.58, "
            "optimum-intel 2.x < 5.6); the transformers 4.57 set runs this check"
        )
    source = tmp_path / "model"
    surgery.apply(tiny("vit"), [TOME, "ggem"]).save_pretrained(source)
    image_processor(32).save_pretrained(source)
    result = export(source, tmp_path / "out", to=to)
    assert json.loads((tmp_path / "out" / RECIPE).read_text())["steps"][0]["plugin"] == "token_merge"
    assert "quantization_config" not in json.loads((tmp_path / "out" / "config.json").read_text())
    x = images(batch=2)
    np.save(tmp_path / "x.npy", x.numpy())
    module, cls = runtime.rsplit(".", 1)
    extra = ', ov_config={"INFERENCE_PRECISION_HINT": "f32"}' if to == "openvino" else ""
    script = (
        f"import sys, numpy, torch; from {module} import {cls}; from transformers import AutoImageProcessor\n"
        f"m = {cls}.from_pretrained(r'{tmp_path / 'out'}'{extra})\n"
        f"AutoImageProcessor.from_pretrained(r'{tmp_path / 'out'}')\n"
        f"numpy.save(r'{tmp_path / 'y.npy'}', m(pixel_values=torch.from_numpy(numpy.load(r'{tmp_path / 'x.npy'}'))).logits.numpy())\n"
        "assert 'surgery' not in sys.modules\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    run = run_onnx if to == "onnx" else run_openvino
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), run(result.path, x.numpy()), atol=1e-5, rtol=0)


def test_export_cli(tmp_path, capsys, digits):
    folder = digits[0]
    assert main(["export", str(folder), "--to", "onnx", "-o", str(tmp_path / "fp32")]) == 0
    assert "exported fp32 onnx" in capsys.readouterr().out
    assert main(["export", str(folder), "--to", "openvino", "--int8", "-o", str(tmp_path / "int8")]) == 2
    assert "quantize needs calibration data" in capsys.readouterr().err
    assert (
        main(
            [
                "export",
                str(folder),
                "--to",
                "openvino",
                "--int8",
                "--calibration",
                "digits",
                "-o",
                str(tmp_path / "int8"),
            ]
        )
        == 0
    )
    assert "exported int8 openvino" in capsys.readouterr().out
    assert (tmp_path / "int8" / "openvino_model.xml").exists() and (
        tmp_path / "int8" / "preprocessor_config.json"
    ).exists()


def test_a_mismatch_beyond_tolerance_is_an_error(tmp_path, monkeypatch):
    import surgery.publish.export as exporting

    monkeypatch.setattr(exporting, "run_onnx", lambda path, pixels: np.zeros((pixels.shape[0], 10), dtype=np.float32))
    with pytest.raises(
        ExportError,
        match=r"the onnx export differs from PyTorch by .* \(allowed 1e-04: 1e-04 times the largest logit, at least 1\)",
    ):
        export(tiny("vit"), tmp_path, to="onnx")


def test_the_tolerance_scales_with_the_logits(tmp_path, monkeypatch):
    """A trained model's logits of ~10 differ by ~1e-3 in OpenVINO's CPU kernels (approximate exp/erf):
    relative to the logits' scale that is float rounding, not a wrong graph."""
    import surgery.publish.export as exporting

    model = tiny("vit")
    with torch.no_grad():
        model.classifier.weight.mul_(1e4)  # logits in the hundreds
    reference = {}

    def scaled(path, pixels):
        with torch.no_grad():
            logits = model(pixel_values=torch.from_numpy(pixels)).logits.numpy()
        reference["largest"] = float(np.abs(logits).max())
        return logits * (1 + 5e-5)  # off by 5e-5 of each logit: far above 1e-4 absolute

    monkeypatch.setattr(exporting, "run_onnx", scaled)
    result = export(model, tmp_path / "ok", to="onnx")
    assert reference["largest"] > 10 and 1e-4 < result.max_abs_diff <= 1e-4 * reference["largest"]
    report = json.loads((tmp_path / "ok" / "export_report.json").read_text())
    assert report["tolerance"] == pytest.approx(1e-4 * reference["largest"], rel=1e-6)
    monkeypatch.setattr(exporting, "run_onnx", lambda path, pixels: scaled(path, pixels) * (1 + 1e-3))
    with pytest.raises(ExportError, match=r"differs from PyTorch by"):
        export(model, tmp_path / "bad", to="onnx")


def test_unknown_format():
    with pytest.raises(ExportError, match=r"'to' got 'tflite'; allowed: onnx, openvino"):
        export(tiny("vit"), "unused", to="tflite")


def test_top_level_api(tmp_path):
    result = surgery.export(surgery.apply(tiny("vit"), "ggem"), tmp_path, to="onnx")
    assert result.path.name == "model.onnx" and callable(surgery.card) and callable(surgery.push)


@pytest.mark.parametrize("exporter", ["torch", "auto"])
def test_the_tracers_warnings_go_to_the_report_not_the_terminal(tmp_path, exporter):
    """A token reduction's shape arithmetic is traced as constants (the graph fixes every dimension but
    the batch, which the parity check varies): the tracer's warnings are listed in the report, never
    printed; other warnings still are."""
    import warnings

    model = surgery.apply(tiny("vit"), [("token_merge", {"r": 2})])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        surgery.export(model, tmp_path / "onnx", to="onnx", exporter=exporter)
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    report = json.loads((tmp_path / "onnx" / "export_report.json").read_text())
    assert any(entry.startswith("merge.py:") for entry in report["traced_as_constants"]), report["traced_as_constants"]
