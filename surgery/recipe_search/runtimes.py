"""Running a model where the user will run it: PyTorch eager, ONNX Runtime or OpenVINO (CPU).

``compile_for(model, runtime, folder)`` returns a function from a float32 NumPy batch to logits:
PyTorch runs the model itself (``torch.no_grad``); ONNX Runtime and OpenVINO run surgery's export
(:func:`surgery.publish.export.export`, whose parity check against PyTorch must pass, or for int8
models report the difference). OpenVINO compiles with the f32 inference-precision hint, as
``benchmarks/speed_table.py`` does, so a float model is compared at one precision on every CPU
(int8 layers run int8 either way). :func:`surgery.evaluation.timing.time_side_by_side` times the original and a candidate in
turns within one process (medians after warm-up), so their ratio survives a noisy machine.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from surgery.errors import ConfigError, did_you_mean

RUNTIMES = ("torch", "onnx", "openvino")
Compiled = Callable[[np.ndarray], np.ndarray]


def check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise ConfigError(
            f"search: 'runtime' got {runtime!r}; allowed: {', '.join(RUNTIMES)}." + did_you_mean(runtime, RUNTIMES)
        )


def compile_for(model: torch.nn.Module, runtime: str, folder: Path) -> tuple[Compiled, dict[str, Any]]:
    """``model`` ready to run in ``runtime`` (exported under ``folder`` when it is not PyTorch), and
    what the export reported (its largest logit difference from PyTorch)."""
    check_runtime(runtime)
    model.eval()
    if runtime == "torch":

        def run(pixels: np.ndarray) -> np.ndarray:
            with torch.no_grad():  # not inference_mode: see surgery.evaluation.accuracy
                return model(pixel_values=torch.from_numpy(pixels)).logits.numpy()

        return run, {}
    from surgery.publish.export import export

    with warnings.catch_warnings():  # the tracer's notes on shapes fixed at export time (documented in export)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        result = export(model, folder, to="onnx" if runtime == "onnx" else "openvino", overwrite=True)
    info = {"export_max_abs_diff": result.max_abs_diff, "export_exact": not result.quantized}
    if runtime == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # no busy-waiting between runs: with two sessions timed in turns, one's spinning threads
        # would steal the cores from the other (identical models measured 0.85x-1.7x apart)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(result.path), options, providers=["CPUExecutionProvider"])
        return (lambda pixels: session.run(None, {"pixel_values": pixels})[0]), info
    import openvino as ov

    compiled = ov.Core().compile_model(str(result.path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return (lambda pixels: compiled(pixels)[0]), info


def correct(run: Compiled, pixel_values: torch.Tensor, labels: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Whether each image's top-1 prediction is its label (a bool per image, in order)."""
    hits = []
    for start in range(0, len(labels), batch_size):
        logits = run(pixel_values[start : start + batch_size].numpy())
        hits.append(np.asarray(logits).argmax(-1) == labels[start : start + batch_size].numpy())
    return np.concatenate(hits) if hits else np.zeros(0, bool)


def size_bytes(model: torch.nn.Module, folder: Path) -> int:
    """Bytes of the model's checkpoint, saved under ``folder`` as surgery saves it (safetensors: int8
    and bit-packed weights at their stored size, calibration-only state such as observers' histograms
    left out)."""
    import shutil

    from surgery.checkpoint.saving import save

    shutil.rmtree(folder, ignore_errors=True)
    save(model, folder)
    size = sum(path.stat().st_size for path in folder.glob("*.safetensors"))
    shutil.rmtree(folder, ignore_errors=True)
    return size
