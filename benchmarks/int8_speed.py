"""int8 vs fp32 in ONNX Runtime and OpenVINO, against Optimum's own dynamic quantization.

Speed: a ViT-B/16 shape (random weights), 224 px, batch 8. Every variant is exported and timed
side by side in one run (medians over repeats after warm-up):
- fp32: the unmodified model exported with Optimum;
- surgery int8: ``quantize`` (static, calibrated with torch observers) exported with QDQ;
- Optimum peer: ``ORTQuantizer`` dynamic int8 (``AutoQuantizationConfig.avx512_vnni``) on the fp32 ONNX.
OpenVINO runs the fp32 IR with the f32 precision hint and the int8 IR as compiled by default.
Accuracy: the same three on the built-in digits model (360 test images), in ONNX Runtime.

    python benchmarks/int8_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov
import torch
from transformers import ViTConfig, ViTForImageClassification

import surgery
from surgery.data.digits import digits_for
from surgery.demo.model import default_model
from surgery.publish.export import export

from _common import markdown_table, time_side_by_side, write_report


def vit_base() -> ViTForImageClassification:
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12,
                                               num_attention_heads=12, intermediate_size=3072, num_labels=1000)).eval()


def optimum_dynamic(onnx_dir: Path, out: Path) -> Path:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    quantizer = ORTQuantizer.from_pretrained(onnx_dir, file_name="model.onnx")
    quantizer.quantize(save_dir=out, quantization_config=AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True))
    return out / "model_quantized.onnx"


def three_variants(model_fn, calibration, tmp: Path) -> dict[str, Path]:
    fp32 = export(model_fn(), tmp / "fp32", to="onnx").path
    int8 = export(surgery.apply(model_fn(), "quantize", calibration=calibration), tmp / "int8", to="onnx").path
    return {"fp32": fp32, "surgery int8 (static QDQ)": int8, "Optimum ORTQuantizer (dynamic)": optimum_dynamic(fp32.parent, tmp / "dynamic")}


def ort_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    x = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
    calibration = [torch.randn(8, 3, 224, 224) for _ in range(2)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        onnx_files = three_variants(vit_base, calibration, tmp / "vitb")
        sessions = {name: ort_session(path) for name, path in onnx_files.items()}
        core = ov.Core()
        ov_models = {
            "fp32": core.compile_model(str(onnx_files["fp32"]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}),
            "surgery int8 (static QDQ)": core.compile_model(str(onnx_files["surgery int8 (static QDQ)"]), "CPU"),
        }
        runs = {f"ORT {n}": (lambda s=s: s.run(None, {"pixel_values": x})) for n, s in sessions.items()}
        runs.update({f"OpenVINO {n}": (lambda m=m: m(x)) for n, m in ov_models.items()})
        seconds = time_side_by_side(runs, repeats=args.repeats)
        speed_rows = []
        for runtime in ("ORT", "OpenVINO"):
            base = seconds[f"{runtime} fp32"]
            for name, value in seconds.items():
                if name.startswith(runtime):
                    speed_rows.append([runtime, name.split(" ", 1)[1], f"{value * 1000:.0f}", f"{base / value:.2f}x"])

        folder = default_model("vit")
        train_pixels = digits_for(folder, "train")[0]
        pixels, labels = digits_for(folder)
        digits_files = three_variants(lambda: surgery.load(folder), train_pixels[:256].split(32), tmp / "digits")
        accuracy_rows = []
        for name, path in digits_files.items():
            predictions = ort_session(path).run(None, {"pixel_values": pixels.numpy()})[0].argmax(-1)
            accuracy_rows.append([name, f"{(predictions == labels.numpy()).mean():.2%}"])
    body = (
        f"ViT-B/16 shape (random weights), 224 px, batch 8, {args.repeats} side-by-side repeats after 2 warm-up rounds.\n\n"
        + markdown_table(["runtime", "model", "ms / batch", "speed-up vs fp32 in the same runtime"], speed_rows)
        + "\n\nAccuracy on the built-in digits ViT (360 test digits), ONNX Runtime:\n\n"
        + markdown_table(["model", "accuracy"], accuracy_rows)
    )
    write_report("int8_speed", "int8 in ONNX Runtime and OpenVINO", body)


if __name__ == "__main__":
    main()
