"""surgery's int8 against the peer a user would pick instead, in every runtime, side by side.

Speed: a ViT-B/16 shape (random weights), 224 px, batch 8, every variant timed in one run (medians
over repeats after warm-up, each repeat running every variant in turn):
- PyTorch eager (``torch.inference_mode()``): fp32; surgery ``quantize`` (static W8A8 on the int8 kernels
  measured fastest here; with ``attention="int8"``, the attention matmuls' inputs on int8 grids too; and with
  ``patch_embed`` and ``classifier`` "int8" as well, everything NNCF quantizes); ``torch.ao.quantization.quantize_dynamic``; torchao's
  ``Int8DynamicActivationInt8WeightConfig`` (when torchao is installed);
- ONNX Runtime: fp32; surgery's three ``quantize`` variants exported as QDQ; Optimum's ``ORTQuantizer`` dynamic and
  static (calibrated on the same images, min-max) on the fp32 ONNX;
- OpenVINO: fp32 (f32 hint); surgery's QDQ ONNX files compiled by OpenVINO; NNCF post-training quantization
  (``nncf.quantize``, transformer preset) of the fp32 model, calibrated on the same images.
Accuracy: the same variants built from the built-in digits model (360 test images), calibrated on 256
training digits, each in its own runtime.

    python benchmarks/int8_speed.py [--repeats 5] [--threads 2]

Optimum's quantizer rows need the Optimum extra (the transformers 4.57 set); torchao's row needs
``pip install torchao``. A row whose tool is missing says so instead of a number.
"""

from __future__ import annotations

import copy
import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov
import torch

import surgery
from surgery.data.digits import digits_for
from surgery.demo.model import default_model
from surgery.publish.export import export

from _common import markdown_table, time_side_by_side, timing_arguments, vit_base, write_report

MISSING = "not installed"
# surgery's variants, by row name: the linears; the attention matmuls too (as NNCF's transformer preset); and also
# the patch embedding and the classifier (everything NNCF's preset quantizes)
SURGERY = {
    "surgery quantize": "quantize",
    "surgery quantize, attention=int8": ("quantize", {"attention": "int8"}),
    "surgery quantize, attention + patch_embed + classifier int8": (
        "quantize",
        {"attention": "int8", "patch_embed": "int8", "classifier": "int8"},
    ),
}


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# -- PyTorch ----------------------------------------------------------------------------------------------
def torch_variants(model, calibration: list[torch.Tensor]) -> dict[str, object]:
    variants = {
        "fp32": model,
        **{
            name: surgery.apply(copy.deepcopy(model), [step], calibration=calibration).eval()
            for name, step in SURGERY.items()
        },
        "torch quantize_dynamic (int8)": torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8
        ),
    }
    if has("torchao"):
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        peer = copy.deepcopy(model)
        quantize_(peer, Int8DynamicActivationInt8WeightConfig())
        variants["torchao Int8DynamicActivationInt8Weight"] = peer
    else:
        variants["torchao Int8DynamicActivationInt8Weight"] = MISSING
    return variants


def torch_logits(model, pixels: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return torch.cat([model(pixel_values=b).logits for b in pixels.split(64)]).numpy()


# -- ONNX Runtime -----------------------------------------------------------------------------------------
def ort_variants(model_fn, calibration: list[torch.Tensor], tmp: Path) -> dict[str, object]:
    fp32 = export(model_fn(), tmp / "fp32", to="onnx").path
    variants: dict[str, object] = {"fp32": fp32}
    for index, (name, step) in enumerate(SURGERY.items()):  # static QDQ
        variants[name] = export(
            surgery.apply(model_fn(), [step], calibration=calibration), tmp / f"int8-{index}", to="onnx"
        ).path
    if has("optimum.onnxruntime"):
        variants["Optimum ORTQuantizer dynamic"] = optimum_quantize(fp32.parent, tmp / "dynamic", None)
        variants["Optimum ORTQuantizer static (min-max)"] = optimum_quantize(fp32.parent, tmp / "static", calibration)
    else:
        variants["Optimum ORTQuantizer dynamic"] = variants["Optimum ORTQuantizer static (min-max)"] = MISSING
    return variants


def optimum_quantize(onnx_dir: Path, out: Path, calibration: list[torch.Tensor] | None) -> Path:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoCalibrationConfig, AutoQuantizationConfig

    quantizer = ORTQuantizer.from_pretrained(onnx_dir, file_name="model.onnx")
    config = AutoQuantizationConfig.avx512_vnni(is_static=calibration is not None, per_channel=True)
    ranges = None
    if calibration is not None:
        from datasets import Dataset

        data = Dataset.from_dict({"pixel_values": torch.cat(calibration).numpy()})
        ranges = quantizer.fit(
            dataset=data,
            calibration_config=AutoCalibrationConfig.minmax(data),
            operators_to_quantize=config.operators_to_quantize,
            batch_size=8,
        )
    quantizer.quantize(save_dir=out, quantization_config=config, calibration_tensors_range=ranges)
    return out / "model_quantized.onnx"


def ort_logits(path: Path, pixels: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"pixel_values": b})[0] for b in np.array_split(pixels, 6)])


# -- OpenVINO ---------------------------------------------------------------------------------------------
def ov_variants(onnx_files: dict[str, object], calibration: list[torch.Tensor]) -> dict[str, object]:
    import nncf

    core = ov.Core()
    fp32 = core.read_model(str(onnx_files["fp32"]))
    dataset = nncf.Dataset([c.numpy() for c in calibration])
    nncf_model = nncf.quantize(fp32, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))
    return {
        "fp32 (f32 hint)": core.compile_model(fp32, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}),
        **{name: core.compile_model(str(onnx_files[name]), "CPU") for name in SURGERY},  # surgery's QDQ ONNX
        "NNCF nncf.quantize (transformer preset)": core.compile_model(nncf_model, "CPU"),
    }


def ov_logits(compiled, pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([compiled(b)[0] for b in np.array_split(pixels, 6)])


# -- the run ----------------------------------------------------------------------------------------------
def speed(args) -> list[list[object]]:
    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    calibration = [torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(s)) for s in range(1, 3)]
    with tempfile.TemporaryDirectory() as tmp:
        pt = torch_variants(vit_base(), calibration)
        onnx_files = ort_variants(vit_base, calibration, Path(tmp))
        ov_models = ov_variants(onnx_files, calibration)
        runs = {}
        for name, model in pt.items():
            if model is not MISSING:
                runs[("PyTorch", name)] = lambda m=model: torch_logits(m, x)
        for name, path in onnx_files.items():
            if path is not MISSING:
                session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                runs[("ONNX Runtime", name)] = lambda s=session: s.run(None, {"pixel_values": x.numpy()})
        for name, compiled in ov_models.items():
            runs[("OpenVINO", name)] = lambda c=compiled: c(x.numpy())
        seconds = time_side_by_side(runs, repeats=args.repeats)
        missing = [
            (rt, n)
            for rt, variants in (("PyTorch", pt), ("ONNX Runtime", onnx_files))
            for n, v in variants.items()
            if v is MISSING
        ]
    rows = []
    for runtime in ("PyTorch", "ONNX Runtime", "OpenVINO"):
        base = next(v for (rt, n), v in seconds.items() if rt == runtime and n.startswith("fp32"))
        for (rt, name), value in seconds.items():
            if rt == runtime:
                rows.append([runtime, name, f"{value * 1000:.0f}", f"{base / value:.2f}x"])
        rows += [[rt, n, MISSING, ""] for rt, n in missing if rt == runtime]
    return rows


def accuracy() -> list[list[object]]:
    folder = default_model("vit")
    calibration = digits_for(folder, "train")[0][:256].split(32)
    pixels, labels = digits_for(folder)
    labels = labels.numpy()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in torch_variants(surgery.load(folder), list(calibration)).items():
            rows.append(
                [
                    "PyTorch",
                    name,
                    MISSING
                    if model is MISSING
                    else f"{(torch_logits(model, pixels).argmax(-1) == labels).mean():.2%}",
                ]
            )
        onnx_files = ort_variants(lambda: surgery.load(folder), list(calibration), Path(tmp))
        for name, path in onnx_files.items():
            rows.append(
                [
                    "ONNX Runtime",
                    name,
                    MISSING
                    if path is MISSING
                    else f"{(ort_logits(path, pixels.numpy()).argmax(-1) == labels).mean():.2%}",
                ]
            )
        for name, compiled in ov_variants(onnx_files, list(calibration)).items():
            rows.append(["OpenVINO", name, f"{(ov_logits(compiled, pixels.numpy()).argmax(-1) == labels).mean():.2%}"])
    return rows


def main() -> None:
    args = timing_arguments()
    speed_rows = speed(args)
    accuracy_rows = accuracy()
    body = (
        f"ViT-B/16 shape (random weights), 224 px, batch 8, {args.threads} threads, {args.repeats} side-by-side "
        "repeats after 2 warm-up rounds (medians); calibration: 2 batches of 8 random images.\n\n"
        + markdown_table(["runtime", "model", "ms / batch", "speed vs fp32 in the same runtime"], speed_rows)
        + "\n\nAccuracy on the built-in digits ViT (360 test digits; calibration: 256 training digits), "
        "each variant in its own runtime:\n\n" + markdown_table(["runtime", "model", "accuracy"], accuracy_rows)
    )
    write_report("int8_speed", "int8 against the peers, in PyTorch, ONNX Runtime and OpenVINO", body)


if __name__ == "__main__":
    main()
