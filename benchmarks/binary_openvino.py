"""Does OpenVINO run bivit's W1A1 linears as bits, and how fast? One layer at a time (issue 32, item 2).

OpenVINO's CPU plugin executes ``BinaryConvolution`` (opset1, mode ``xnor-popcount``) on packed bits: 0/1
inputs from a two-level ``FakeQuantize`` (the binarization, fused into the convolution) and ``u1`` weights.
A linear is a 1x1 convolution, so a W1A1 linear ``alpha * (sign(x) @ sign(W)^T) + b`` becomes

    x (B, T, C) -> 4-D layout -> FakeQuantize(2 levels at 0) -> BinaryConvolution(u1 signs) -> back -> * alpha + b

For every linear shape of a ViT-B/16 at batch 8 (1576 tokens), each variant is compiled for the CPU and
checked against the exact integer product (numpy), then all are timed side by side (medians):
- the float linear the model had (f32 hint);
- the +-1 float matmul bivit's ONNX export holds (sign as a Select, the signs as a float constant);
- BinaryConvolution with the tokens as the height of one image per batch element, (B, C, T, 1), and with all
  tokens as the height of one image, (1, C, B*T, 1).
The sign convention is bivit's: sign(0) = +1 (the threshold sits just below zero).

Whole model: a ViT-B/16 (random weights) with ``bivit`` W1A1 (its defaults: every block linear binary, binary
attention): its ONNX export read by OpenVINO (+-1 float matmuls), and ``surgery.export(to="openvino")``, which
rewrites every W1A1 linear to the BinaryConvolution form above (``surgery.plugins.bivit.openvino``); fp32
beside them; batch 8 at 224 px; both against PyTorch's logits.

    python benchmarks/binary_openvino.py [--repeats 15] [--model-repeats 7]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset1 as op1
import openvino.opset13 as ops
import torch

import surgery
from surgery.plugins.bivit.openvino import THRESHOLD, binary_product, u1_constant
from surgery.publish.export import export

from _common import markdown_table, time_side_by_side, vit_base, write_report

BATCH, TOKENS = 8, 197
SHAPES = {
    "query/key/value, attention output (768 -> 768)": (768, 768),
    "MLP in (768 -> 3072)": (768, 3072),
    "MLP out (3072 -> 768)": (3072, 768),
}


def float_linear(weight: np.ndarray, bias: np.ndarray) -> ov.Model:
    x = ops.parameter([BATCH, TOKENS, weight.shape[1]], np.float32)
    return ov.Model([ops.add(ops.matmul(x, ops.constant(weight), False, True), ops.constant(bias))], [x])


def signs_matmul(signs: np.ndarray, alpha: np.ndarray, bias: np.ndarray) -> ov.Model:
    x = ops.parameter([BATCH, TOKENS, signs.shape[1]], np.float32)
    sign = ops.select(ops.greater_equal(x, np.float32(0)), np.float32(1), np.float32(-1))
    product = ops.matmul(sign, ops.constant(signs), False, True)
    return ov.Model([ops.add(ops.multiply(product, ops.constant(alpha)), ops.constant(bias))], [x])


def binary_convolution(signs: np.ndarray, alpha: np.ndarray, bias: np.ndarray, layout: str) -> ov.Model:
    outputs, inputs = signs.shape
    x = ops.parameter([BATCH, TOKENS, inputs], np.float32)
    if layout == "(B, C, T, 1)":  # what surgery's export writes (surgery.plugins.bivit.openvino)
        y = binary_product(x.output(0), signs)
    else:
        rows = ops.reshape(x, np.array([BATCH * TOKENS, inputs]), False)
        image = ops.reshape(ops.transpose(rows, np.array([1, 0])), np.array([1, inputs, BATCH * TOKENS, 1]), False)
        bits = ops.fake_quantize(image, np.float32(THRESHOLD), np.float32(THRESHOLD), np.float32(0), np.float32(1), 2)
        product = op1.binary_convolution(
            bits, u1_constant(signs), [1, 1], [0, 0], [0, 0], [1, 1], "xnor-popcount", 0.0
        )
        y = ops.reshape(
            ops.transpose(ops.reshape(product, np.array([outputs, BATCH * TOKENS]), False), np.array([1, 0])),
            np.array([BATCH, TOKENS, outputs]),
            False,
        )
    return ov.Model([ops.add(ops.multiply(y, ops.constant(alpha)), ops.constant(bias))], [x])


def executed(compiled) -> str:
    """The runtime graph's layer types with their precisions, e.g. ``BinaryConvolution u1``."""
    kinds = {
        (op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str))
        for op in compiled.get_runtime_model().get_ops()
    }
    return ", ".join(
        f"{kind} {precision}"
        for kind, precision in sorted(kinds)
        if kind in ("BinaryConvolution", "MatMul", "FullyConnected", "Convolution")
    )


def whole_model(repeats: int) -> tuple[list[list[object]], list[str]]:
    """fp32, bivit W1A1 as exported, and bivit W1A1 with BinaryConvolution linears: a ViT-B/16, batch 8."""
    core = ov.Core()
    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0)).numpy()
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export(vit_base(), Path(tmp) / "fp32", to="onnx").path
        model = surgery.apply(vit_base(), ["bivit"])
        with torch.inference_mode():
            reference = model(pixel_values=torch.from_numpy(x)).logits.numpy()
        binary = export(model, Path(tmp) / "bivit", to="onnx").path
        # surgery's OpenVINO export: the W1A1 linears as BinaryConvolution, the IR's batch fixed at 8
        bits = export(model, Path(tmp) / "bivit-ov", to="openvino", batch=len(x))
        rewrites = json.loads((Path(tmp) / "bivit-ov" / "export_report.json").read_text())["openvino_rewrites"]
        variants = {
            "fp32 (f32 hint)": core.compile_model(str(fp32), "CPU", f32),
            "bivit W1A1, the ONNX graph in OpenVINO (+-1 float matmuls, f32 hint)": core.compile_model(
                str(binary), "CPU", f32
            ),
            "bivit W1A1, surgery's OpenVINO export (BinaryConvolution linears, f32 hint)": core.compile_model(
                str(bits.path), "CPU", f32
            ),
        }
    notes = [
        f"{'; '.join(rewrites)}; the CPU plugin runs "
        f"{executed(variants['bivit W1A1, surgery' + chr(39) + 's OpenVINO export (BinaryConvolution linears, f32 hint)'])}"
    ]
    for name in list(variants)[1:]:
        logits = variants[name](x)[0]
        agree = float((logits.argmax(-1) == reference.argmax(-1)).mean())
        notes.append(
            f"{name}: logits against PyTorch's (bivit, eager): max |difference| "
            f"{float(np.abs(logits - reference).max()):.3g} (logits up to {float(np.abs(reference).max()):.3g}), "
            f"top-1 agreement {agree:.0%} on the 8 random images"
        )
    seconds = time_side_by_side({n: (lambda c=c: c(x)) for n, c in variants.items()}, repeats=repeats)
    base = seconds["fp32 (f32 hint)"]
    return [[name, f"{value * 1000:.0f}", f"{base / value:.2f}x"] for name, value in seconds.items()], notes


def arguments():
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15, help="side-by-side repeats per layer shape")
    parser.add_argument("--model-repeats", type=int, default=7, help="side-by-side repeats of the whole models")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (export only)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def main() -> None:
    args = arguments()
    core = ov.Core()
    rng = np.random.default_rng(0)
    rows, checks = [], []
    for name, (inputs, outputs) in SHAPES.items():
        x = rng.standard_normal((BATCH, TOKENS, inputs)).astype(np.float32)
        x[0, 0, :8] = 0.0  # exact zeros: sign(0) = +1
        weight = (rng.standard_normal((outputs, inputs)) * 0.02).astype(np.float32)
        bias = (rng.standard_normal(outputs) * 0.01).astype(np.float32)
        signs = np.where(weight - weight.mean(1, keepdims=True) >= 0, 1.0, -1.0).astype(np.float32)
        alpha = np.abs(weight).mean(1).astype(np.float32)
        integers = np.where(x >= 0, 1, -1).reshape(-1, inputs).astype(np.int64) @ signs.T.astype(np.int64)
        exact = (integers * alpha.astype(np.float64) + bias).reshape(BATCH, TOKENS, outputs)
        variants = {
            "float linear (f32)": core.compile_model(
                float_linear(weight, bias), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
            ),
            "+-1 float matmul (bivit's ONNX form, f32)": core.compile_model(
                signs_matmul(signs, alpha, bias), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
            ),
        }
        for layout in ("(B, C, T, 1)", "(1, C, B*T, 1)"):
            variants[f"BinaryConvolution {layout}"] = core.compile_model(
                binary_convolution(signs, alpha, bias, layout), "CPU"
            )
        for variant, compiled in variants.items():
            if variant != "float linear (f32)":
                error = float(np.abs(compiled(x)[0] - exact).max())
                checks.append(
                    f"{name}, {variant}: max |error| {error:.1e} against the exact product; runs {executed(compiled)}"
                )
                assert error < 1e-3 * float(np.abs(exact).max()), (name, variant, error)
        seconds = time_side_by_side({v: (lambda c=c: c(x)) for v, c in variants.items()}, repeats=args.repeats)
        base = seconds["float linear (f32)"]
        rows += [[name, variant, f"{value * 1000:.2f}", f"{base / value:.2f}x"] for variant, value in seconds.items()]
    print("layers timed; exporting the whole models", file=sys.stderr)
    model_rows, notes = whole_model(args.model_repeats)
    body = (
        f"ViT-B/16 linear shapes at batch {BATCH} ({BATCH * TOKENS} tokens), OpenVINO {ov.get_version()}, CPU plugin, "
        f"{args.repeats} side-by-side repeats after 2 warm-up rounds (medians), OpenVINO's default threads.\n\n"
        + markdown_table(["layer", "variant", "ms", "speed vs the float linear"], rows)
        + "\n\nChecks (each variant against the exact integer product, and what the CPU plugin executed):\n\n"
        + "\n".join(f"- {line}" for line in checks)
        + f"\n\nWhole model: ViT-B/16 (random weights), 224 px, batch 8, {args.model_repeats} side-by-side repeats "
        "after 2 warm-up rounds (medians):\n\n"
        + markdown_table(["model", "ms / batch", "speed vs fp32"], model_rows)
        + "\n\n"
        + "\n".join(f"- {line}" for line in notes)
    )
    write_report("binary_openvino", "1-bit linears as bits: OpenVINO's BinaryConvolution, per layer", body)


if __name__ == "__main__":
    main()
