"""Export a rewritten model with Optimum to ONNX and OpenVINO, and check it against PyTorch.

Who does what (``exporter="optimum"``, the default where optimum-onnx is installed; ``"torch"`` calls
``torch.onnx.export`` directly, with the same input/output names and dynamic batch axis, for
transformers versions optimum-onnx does not install next to; the graph is written by :mod:`surgery.publish.onnx_graph`): Optimum's ``onnx_export_from_model`` (optimum-onnx; torch.onnx's TorchScript
exporter underneath) writes ``model.onnx`` from the live model, with a dynamic batch axis; torch's
fake-quant modules become QuantizeLinear/DequantizeLinear pairs. OpenVINO's ``convert_model`` turns
that ONNX file into IR (``openvino_model.xml``/``.bin``); Q/DQ pairs become FakeQuantize nodes that
OpenVINO's CPU plugin runs in int8. ONNX Runtime executes the QDQ graph with integer kernels
(``MatMulIntegerToFloat``).

Why not optimum-intel's ``export_from_model`` for OpenVINO: on live rewritten models it fails
(transformers 4.57.6, optimum-intel 1.27): OpenVINO's PyTorch frontend refuses the unknown
``quantization_config`` method, its trace sanity check rejects Agent Attention, and saving the
config fails on a torch dtype. Converting the checked ONNX graph gives the same IR format, which
``OVModelForImageClassification`` loads (tested).

The folder is ready for ``optimum.onnxruntime.ORTModelForImageClassification`` or
``optimum.intel.OVModelForImageClassification`` without surgery installed: ``config.json`` without
the recipe (kept beside it as ``surgery_recipe.json``), the image processor, and
``export_report.json``. Every export is run on the same random inputs as the PyTorch model (a batch
size other than the one traced, to exercise the dynamic axis); the largest absolute logit
difference is reported and must stay within :data:`TOLERANCE` times the logits' scale (the largest
absolute logit, at least 1: OpenVINO's CPU kernels approximate exp and erf, so a trained model's logits
of 8 differ by up to 5e-3 on an AMD EPYC at the f32 hint) for float models. Quantized models are
checked by the caller on real data (class agreement), since int8 kernels round differently.

Fixed at export time: the image size (the config's; transformers traces position embeddings at
that size) and everything decided from shapes in Python, such as token merging's per-block r and
token counts. Only the batch size is dynamic.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from surgery.core.history import get_history
from surgery.core.host import get_host
from surgery.errors import ExportError
from surgery.publish.onnx_graph import inputs, needs, write_onnx
from surgery.toolkit.completeness import refuse_incomplete

REPORT = "export_report.json"
RECIPE = "surgery_recipe.json"
FORMATS = ("onnx", "openvino")
EXPORTERS = ("auto", "optimum", "torch")
TOLERANCE = {"onnx": 1e-4, "openvino": 1e-3}
EXPORT_FILES = (
    "model.onnx",
    "model.onnx_data",
    "openvino_model.xml",
    "openvino_model.bin",
    "config.json",
    "preprocessor_config.json",
    REPORT,
    RECIPE,
)


@dataclasses.dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float
    quantized: bool


def export(
    model: Any,
    output: str | Path,
    to: Literal["onnx", "openvino"] = "onnx",
    source: str | Path | None = None,
    batch: int = 3,
    seed: int = 0,
    check: bool = True,
    overwrite: bool = False,
    exporter: Literal["auto", "optimum", "torch"] = "auto",
) -> ExportResult:
    """Export ``model`` (a model or a saved folder) to ``output`` and compare it with PyTorch.

    ``batch``: images in the check against PyTorch, and the fixed batch of an OpenVINO graph that a method's
    ``openvino_graph`` rewrite gives static shapes (bivit's W1A1 as BinaryConvolution); otherwise the batch
    axis stays dynamic. ``exporter`` writes the ONNX graph (also the input of the OpenVINO conversion): "optimum"
    (Optimum's ``onnx_export_from_model``, optimum-onnx: transformers 4.57 only), "torch"
    (``torch.onnx.export``, TorchScript, the same dynamic batch axis; any transformers), or "auto":
    Optimum where it is installed and has an ONNX config for the model type (it has none for
    ``dinov2_with_registers``), else torch. The report records which one ran.

    Raises :class:`ExportError` before exporting when a step cannot be exported to ``to``, when
    ``output`` is the model's own folder, or when it holds files an export did not write (unless
    ``overwrite``); and after exporting when the outputs are not finite or a float model differs by
    more than :data:`TOLERANCE` (unless ``check`` is False). The export is built in a temporary
    folder beside ``output`` and moved in only when complete.
    """
    from surgery.checkpoint.loading import load

    if to not in FORMATS:
        raise ExportError(f"export: 'to' got {to!r}; allowed: {', '.join(FORMATS)}.")
    if exporter not in EXPORTERS:
        raise ExportError(f"export: 'exporter' got {exporter!r}; allowed: {', '.join(EXPORTERS)}.")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ExportError(
            f"export: 'batch' got {batch!r}; allowed: an integer >= 1 (images in the check against PyTorch)."
        )
    if isinstance(model, (str, Path)):
        source, model = Path(model), load(model)
    output = Path(output)
    check_output(output, model, source, overwrite)
    refuse_unexportable(model, to)
    refuse_incomplete(model, f"export to {to}", ExportError)
    model.eval()
    output.absolute().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.export-", dir=output.absolute().parent) as tmp:
        stage = Path(tmp) / "out"
        exporter, traced = write_onnx(model, stage if to == "onnx" else Path(tmp) / "onnx", exporter)
        pixels, rewrites = inputs(model, batch, seed), []
        if to == "openvino":
            path, rewrites = _onnx_to_openvino(Path(tmp) / "onnx" / "model.onnx", stage, model, list(pixels.shape))
        else:
            path = stage / "model.onnx"
        _write_deployable_config(model, stage, source)
        with torch.no_grad():  # not inference_mode: see surgery.evaluation.accuracy
            expected = model(pixel_values=pixels).logits.numpy()
        try:
            got = run_onnx(path, pixels.numpy()) if to == "onnx" else run_openvino(path, pixels.numpy())
        except (RuntimeError, ValueError) as error:  # the runtime's own refusal (e.g. OpenVINO's shape checks)
            detail = " ".join(str(error).split())[-400:]
            steps = " -> ".join(step.plugin for step in get_history(model)) or "no surgery steps"
            raise ExportError(
                f"the {to} export of {type(model).__name__} ({steps}) was written but does not run "
                f"in {'ONNX Runtime' if to == 'onnx' else 'OpenVINO'} on a batch of {len(pixels)}: "
                f"{detail}; nothing was saved"
            ) from error
        quantized = any(not get_host().method(step.plugin).export_exact for step in get_history(model))
        finite = bool(np.isfinite(got).all() and np.isfinite(expected).all())
        difference = float(np.abs(got - expected).max()) if finite else float("nan")
        allowed = TOLERANCE[to] * max(1.0, float(np.abs(expected).max())) if finite else TOLERANCE[to]
        (stage / REPORT).write_text(
            json.dumps(
                {
                    "format": to,
                    "file": path.name,
                    "max_abs_diff": difference if finite else None,
                    "finite": finite,
                    "inputs": list(pixels.shape),
                    "tolerance": None if quantized else allowed,
                    "steps": [s.plugin for s in get_history(model)],
                    "cpu": cpu_description(),
                    "exporter": exporter,
                    "path": f"{'Optimum onnx_export_from_model' if exporter == 'optimum' else 'torch.onnx.export'}"
                    + (" -> openvino.convert_model (from the ONNX graph)" if to == "openvino" else ""),
                    "traced_as_constants": traced,  # the tracer's warnings: fixed shapes, the batch varied by the check above
                    **(
                        {"openvino_rewrites": rewrites} if rewrites else {}
                    ),  # the methods' own graph rewrites (static shapes)
                },
                indent=2,
                allow_nan=False,
            )
            + "\n"
        )
        _move_into(stage, output)
    result = ExportResult(output / path.name, to, difference, quantized)
    if check and not finite:
        raise ExportError(
            f"the {to} export gives non-finite logits (NaN or inf) where PyTorch gives "
            f"{'finite' if np.isfinite(expected).all() else 'non-finite'} ones; see {output / REPORT}."
        )
    if check and not quantized and result.max_abs_diff > allowed:
        raise ExportError(
            f"the {to} export differs from PyTorch by {result.max_abs_diff:.2e} (allowed {allowed:.0e}: "
            f"{TOLERANCE[to]:.0e} times the largest logit, at least 1); "
            f"see {output / REPORT}."
        )
    return result


def check_output(output: Path, model: Any, source: str | Path | None, overwrite: bool) -> None:
    """Refuse to export into the model's own folder, or over files an export did not write."""
    own = [Path(p).resolve() for p in (source, getattr(model.config, "_name_or_path", None)) if p and Path(p).is_dir()]
    if output.exists() and not output.is_dir():
        raise ExportError(f"export: the output {output} is a file, not a folder.")
    if output.resolve() in own or (output / "model.safetensors").exists():
        raise ExportError(
            f"export: the output {output} is a model folder; export into another folder "
            "(its config.json would lose the recipe)."
        )
    if output.is_dir() and not overwrite:
        strangers = sorted(p.name for p in output.iterdir() if p.name not in EXPORT_FILES)
        if strangers:
            raise ExportError(
                f"export: {output} holds files an export did not write ({', '.join(strangers[:5])}); "
                "choose an empty folder or pass overwrite=True (--overwrite)."
            )


def _move_into(stage: Path, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    for stale in EXPORT_FILES:  # files of an earlier export that this one does not write
        if (output / stale).is_file() and not (stage / stale).exists():
            (output / stale).unlink()
    for path in stage.iterdir():
        os.replace(path, output / path.name)


def cpu_description() -> dict[str, str]:
    """The CPU model, the instruction set torch uses and the flags that decide int8 kernels (VNNI, AMX)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
                if "model name" in info and "flags" in info:
                    break
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    int8 = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return {
        "model": info.get("model name") or platform.processor() or "unknown",
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "int8_flags": ", ".join(int8) or "none",
    }


def refuse_unexportable(model: Any, to: str) -> None:
    """One error naming every step that declares it cannot be exported to ``to``, and why."""
    reasons = []
    for step in get_history(model):
        method = get_host().methods.get(step.plugin)
        reason = method.export_refusal(to, step.options) if method is not None else None
        if reason:
            reasons.append(f"{step.plugin}: {reason}")
    if reasons:
        raise ExportError(f"cannot export to {to}:\n  - " + "\n  - ".join(reasons))


def _onnx_to_openvino(onnx_path: Path, folder: Path, model: Any, shape: list[int]) -> tuple[Path, list[str]]:
    """The IR converted from the checked ONNX graph, after each step's ``openvino_graph`` rewrite (with the
    notes they return: the rewrite may fix the input ``shape``)."""
    ov = needs("openvino")

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "openvino_model.xml"
    graph, notes = ov.convert_model(str(onnx_path)), []
    for step in get_history(model):
        method = get_host().methods.get(step.plugin)
        if method is not None and method.openvino_graph is not None:
            note = method.openvino_graph(graph, step.options, shape)
            notes += [note] if note else []
    ov.save_model(graph, str(path))
    return path, notes


def _write_deployable_config(model, output: Path, source: str | Path | None) -> None:
    """config.json without the recipe (the graph needs no replay), the recipe beside it, the processor."""
    config = model.config.to_dict()
    recipe = config.pop("quantization_config", None)
    (output / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if recipe is not None:
        (output / RECIPE).write_text(json.dumps(recipe, indent=2) + "\n")
    if source is not None and (Path(source) / "preprocessor_config.json").exists():
        shutil.copy(Path(source) / "preprocessor_config.json", output / "preprocessor_config.json")


def run_onnx(path: Path, pixels: np.ndarray) -> np.ndarray:
    ort = needs("onnxruntime")

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixel_values": pixels})[0]


def run_openvino(path: Path, pixels: np.ndarray, precision: str = "f32") -> np.ndarray:
    """Run IR on the CPU; ``precision`` is the inference precision hint (the default on CPUs with
    bf16 support is bf16, so f32 is asked for when comparing with PyTorch)."""
    ov = needs("openvino")

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision})
    return compiled(pixels)[0]
