"""Export a rewritten model with Optimum to ONNX and OpenVINO, and check it against PyTorch.

Who does what: Optimum's ``onnx_export_from_model`` (optimum-onnx; torch.onnx's TorchScript
exporter underneath) writes ``model.onnx`` from the live model, with dynamic batch and image size
axes; torch's fake-quant modules become QuantizeLinear/DequantizeLinear pairs. OpenVINO's
``convert_model`` turns that ONNX file into IR (``openvino_model.xml``/``.bin``), which
``optimum.intel.OVModelForImageClassification`` loads; Q/DQ pairs become FakeQuantize nodes that
OpenVINO's CPU plugin runs in int8. ONNX Runtime executes the QDQ graph with integer kernels
(``MatMulIntegerToFloat``). Every export is run on the same random inputs as the PyTorch model and
the largest absolute logit difference is reported.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from surgery.errors import SurgeryError

REPORT = "export_report.json"


@dataclasses.dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float


def export(model: Any, output: str | Path, to: Literal["onnx", "openvino"] = "onnx", source: str | Path | None = None,
           batch: int = 2, seed: int = 0) -> ExportResult:
    """Export ``model`` (a model or a saved folder) to ``output`` and check it on random inputs."""
    from surgery.loading import load

    if isinstance(model, (str, Path)):
        source, model = Path(model), load(model)
    output = Path(output)
    if to not in ("onnx", "openvino"):
        raise SurgeryError(f"export: 'to' got {to!r}; allowed: 'onnx', 'openvino'.")
    model.eval()
    onnx_dir = output if to == "onnx" else output / "_onnx"
    _export_onnx(model, onnx_dir)
    if to == "openvino":
        path = _onnx_to_openvino(onnx_dir / "model.onnx", output)
        shutil.rmtree(onnx_dir)
        model.config.save_pretrained(output)
    else:
        path = onnx_dir / "model.onnx"
    _copy_processor(source, output)
    pixels = _inputs(model, batch, seed)
    with torch.inference_mode():
        expected = model(pixel_values=pixels).logits.numpy()
    got = run_onnx(path, pixels.numpy()) if to == "onnx" else run_openvino(path, pixels.numpy())
    result = ExportResult(path, to, float(np.abs(got - expected).max()))
    (output / REPORT).write_text(json.dumps({"format": to, "file": path.name, "max_abs_diff": result.max_abs_diff,
                                             "inputs": list(pixels.shape)}, indent=2) + "\n")
    return result


def _export_onnx(model, folder: Path) -> None:
    from optimum.exporters.onnx import onnx_export_from_model

    onnx_export_from_model(model, output=folder, task="image-classification", do_validation=False)


def _onnx_to_openvino(onnx_path: Path, folder: Path) -> Path:
    import openvino as ov

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "openvino_model.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(path))
    return path


def run_onnx(path: Path, pixels: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixel_values": pixels})[0]


def run_openvino(path: Path, pixels: np.ndarray, precision: str = "f32") -> np.ndarray:
    """Run IR on the CPU; ``precision`` is the inference precision hint (the default on CPUs with
    bf16 support is bf16, so f32 is asked for when comparing with PyTorch)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision})
    return compiled(pixels)[0]


def _inputs(model, batch: int, seed: int) -> torch.Tensor:
    size = model.config.image_size if isinstance(model.config.image_size, int) else model.config.image_size[0]
    return torch.randn(batch, model.config.num_channels, size, size, generator=torch.Generator().manual_seed(seed))


def _copy_processor(source: str | Path | None, output: Path) -> None:
    if source is not None and (Path(source) / "preprocessor_config.json").exists():
        shutil.copy(Path(source) / "preprocessor_config.json", output / "preprocessor_config.json")
