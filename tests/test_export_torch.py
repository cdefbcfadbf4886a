"""Export through torch.onnx (the path for transformers versions optimum-onnx does not install next to):
the same parity checks as Optimum's path, on both formats, and the report says which exporter ran."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import images, tiny, untie

import surgery
from surgery.errors import ExportError
from surgery.publish.export import REPORT, export, run_onnx

CASES = {
    "ggem": ("vit", ["ggem"]),
    "token_merge": ("deit-distilled", [("token_merge", {"r": 4})]),
    "token_transform": ("deit-distilled", [("token_transform", {"r": 6})]),
    "agent_attention": ("swin", [("agent_attention", {"agents": 4})]),
    "castling": ("vit", [("castling", {"init": "paper"})]),
    "bivit-w1a32": ("vit", [("bivit", {"activations": "full"})]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_torch_exporter_matches_pytorch(case, tmp_path):
    arch, steps = CASES[case]
    model = surgery.apply(untie(tiny(arch)), steps).eval()
    result = export(model, tmp_path / "onnx", to="onnx", exporter="torch")
    report = json.loads((tmp_path / "onnx" / REPORT).read_text())
    assert report["exporter"] == "torch" and result.max_abs_diff <= 1e-4
    assert not any(m.training for m in model.modules())  # torch.onnx must not leave the model in training mode
    x = images(batch=5, seed=9)  # another batch size: the batch axis is dynamic
    with torch.no_grad():
        np.testing.assert_allclose(
            run_onnx(result.path, x.numpy()), model(pixel_values=x).logits.numpy(), atol=1e-4, rtol=0
        )


def test_torch_exporter_to_openvino_and_int8(tmp_path):
    model = surgery.apply(tiny("vit"), ["ggem"]).eval()
    assert export(model, tmp_path / "ov", to="openvino", exporter="torch").max_abs_diff <= 1e-3
    assert (
        json.loads((tmp_path / "ov" / REPORT).read_text())["path"]
        == "torch.onnx.export -> openvino.convert_model (from the ONNX graph)"
    )
    int8 = surgery.apply(
        tiny("vit"), [("quantize", {"calibration_batches": 2})], calibration=[images(4, seed=s) for s in range(2)]
    )
    result = export(int8.eval(), tmp_path / "q", to="onnx", exporter="torch")
    assert result.quantized and json.loads((tmp_path / "q" / REPORT).read_text())["exporter"] == "torch"
    with torch.no_grad():  # int8 kernels round differently from the fake-quant simulation: same classes
        assert (
            run_onnx(result.path, images().numpy()).argmax(-1) == int8(pixel_values=images()).logits.argmax(-1).numpy()
        ).all()


def test_unknown_exporter_is_refused(tmp_path):
    with pytest.raises(ExportError, match=r"export: 'exporter' got 'tf'; allowed: auto, optimum, torch"):
        export(tiny("vit"), tmp_path / "x", exporter="tf")


def test_the_optimum_exporter_on_a_type_it_has_no_config_for_says_to_use_torch(tmp_path):
    import importlib.util

    if importlib.util.find_spec("optimum") is None or importlib.util.find_spec("optimum.exporters") is None:
        pytest.skip("optimum-onnx is not installed in this set")
    model = tiny("dinov2-registers")
    with pytest.raises(
        ExportError,
        match=r"Optimum's ONNX exporter has no config for model type 'dinov2_with_registers'; "
        r"use exporter='torch' \(or 'auto', which does\)",
    ):
        export(model, tmp_path / "out", exporter="optimum")
    result = export(model, tmp_path / "auto")  # auto: torch.onnx, as the report says
    assert json.loads((tmp_path / "auto" / REPORT).read_text())["exporter"] == "torch" and result.max_abs_diff < 1e-4
