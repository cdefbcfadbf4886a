"""Token merging within Swin's windows (``token_merge(unmerge=True)`` on Swin): accuracy, feature maps and speed.

Quality, training-free, on a Swin trained here on the digits (the built-in demo shape: 32 px, patch 4, an 8 x 8
map, windows of 4 x 4 = 16 tokens, depths 2, 2; trained with the digits recipe, so the figures vary a little
across CPUs), on the test split: for each r (tokens merged per window) and merged branches (both; the MLP only,
``branches="mlp"``), the measured FLOPs ratio (torch's
counter), the accuracy, and the cosine similarity of the final feature map (``last_hidden_state``) to the
unmerged model's, averaged over positions and images.

Speed, on Swin-T and Swin-B shapes (random weights; speed does not depend on them; windows of 7 x 7 = 49
tokens, so r=24 merges about half of each window), 224 px, batch 8: PyTorch eager (``torch.inference_mode()``),
ONNX Runtime and OpenVINO (f32), each runtime's variants timed side by side with its fp32 model in one run
(medians over repeats after warm-up). The rows of a shape left out by ``--shapes`` are kept from the previous
results, and the report says so.

    python benchmarks/unmerge_swin.py [--repeats 5] [--threads 2] [--shapes Swin-T Swin-B] [--runtimes ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import torch

import surgery
from surgery.data.digits import digits_split, encode
from surgery.demo.model import build_digits_model
from surgery.demo.zoo import image_processor
from surgery.evaluation.flops import model_flops

from _common import RESULTS, markdown_table, time_side_by_side, timing_arguments, write_report

QUALITY_R = (2, 4, 6, 8)
SPEED_R = (8, 16, 24)
MLP_R = (16, 24)  # branches="mlp": attention on every token, only the MLP merged
SHAPES = {
    "Swin-T": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
    "Swin-B": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32]),
}
RUNTIMES = ("PyTorch eager", "ONNX Runtime", "OpenVINO")


def quality(folder: Path) -> list[list[object]]:
    build_digits_model(folder, arch="swin", progress=False)
    _, test = digits_split()
    x, y = encode(test, image_processor(32))
    original = surgery.load(folder).eval()
    with torch.inference_mode():
        reference = original.swin(pixel_values=x).last_hidden_state
        base = float(original(pixel_values=x).logits.argmax(-1).eq(y).float().mean())
    base_flops = model_flops(original, x[:1])
    rows = [["original", "both", "1.00", f"{base:.2%}", "1.0000"]]
    for branches in ("both", "mlp"):
        for r in QUALITY_R:
            model = surgery.apply(
                copy.deepcopy(original), [("token_merge", {"r": r, "unmerge": True, "branches": branches})]
            )
            with torch.inference_mode():
                accuracy = float(model.eval()(pixel_values=x).logits.argmax(-1).eq(y).float().mean())
                merged = model.swin(pixel_values=x).last_hidden_state
                cosine = float(torch.nn.functional.cosine_similarity(merged, reference, dim=-1).mean())
            rows.append(
                [
                    f"r={r}",
                    branches,
                    f"{model_flops(model, x[:1]) / base_flops:.2f}",
                    f"{accuracy:.2%}",
                    f"{cosine:.4f}",
                ]
            )
    return rows


def swin(shape: str, r: int | None, branches: str = "both"):
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(0)
    model = SwinForImageClassification(SwinConfig(image_size=224, window_size=7, **SHAPES[shape])).eval()
    options = {"r": r, "unmerge": True, "branches": branches}
    return model if r is None else surgery.apply(model, [("token_merge", options)])


def speed(shapes: list[str], runtimes: list[str], repeats: int, log=print) -> list[list[object]]:
    import onnxruntime as ort
    import openvino as ov

    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    rows = []
    for shape in shapes:
        variants = {
            "fp32": (None, "both"),
            **{f"unmerge r={r}": (r, "both") for r in SPEED_R},
            **{f"unmerge r={r}, MLP only": (r, "mlp") for r in MLP_R},
        }
        names = list(variants)
        models = {name: swin(shape, r, branches) for name, (r, branches) in variants.items()}
        flops = {name: model_flops(m, x[:1]) for name, m in models.items()}
        timed: dict[str, dict[str, float]] = {}
        differences: dict[str, float] = {}
        with tempfile.TemporaryDirectory() as tmp:
            if "PyTorch eager" in runtimes:
                log(f"{shape}: timing PyTorch eager ...")
                with torch.inference_mode():
                    timed["PyTorch eager"] = time_side_by_side(
                        {n: (lambda m=m: m(pixel_values=x)) for n, m in models.items()}, repeats=repeats
                    )
            if "ONNX Runtime" in runtimes:
                log(f"{shape}: exporting and timing ONNX Runtime ...")
                sessions = {
                    n: ort.InferenceSession(
                        str(surgery.export(m, Path(tmp) / f"onnx-{i}", to="onnx", batch=8).path),
                        providers=["CPUExecutionProvider"],
                    )
                    for i, (n, m) in enumerate(models.items())
                }
                feed = {"pixel_values": x.numpy()}
                timed["ONNX Runtime"] = time_side_by_side(
                    {n: (lambda s=s: s.run(None, feed)) for n, s in sessions.items()}, repeats=repeats
                )
                sessions.clear()
            if "OpenVINO" in runtimes:
                log(f"{shape}: exporting and timing OpenVINO ...")
                core = ov.Core()
                compiled = {}
                for i, (n, m) in enumerate(models.items()):
                    # random weights leave near-equal merge scores, which OpenVINO's rounding may order otherwise
                    # (another merge, logits apart by ~1e-3): timed anyway, the difference recorded
                    result = surgery.export(m, Path(tmp) / f"ov-{i}", to="openvino", batch=8, check=False)
                    differences[n] = result.max_abs_diff
                    compiled[n] = core.compile_model(str(result.path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
                timed["OpenVINO"] = time_side_by_side(
                    {n: (lambda c=c: c(x.numpy())) for n, c in compiled.items()}, repeats=repeats
                )
                compiled.clear()
        for name in names:
            row = [shape, name, f"{flops[name] / flops['fp32']:.2f}"]
            for runtime in runtimes:
                seconds = timed[runtime]
                row.append(f"{seconds[name] * 1000:.0f} ms, {seconds['fp32'] / seconds[name]:.2f}x")
            if "OpenVINO" in runtimes:
                row.append(f"{differences[name]:.1e}")
            rows.append(row)
        models.clear()
    return rows


def kept_rows(shapes: list[str], runtimes: list[str]) -> list[list[object]]:
    """The previous results' speed rows of the shapes not measured now, where they have the same runtimes."""
    path = RESULTS / "unmerge_swin.json"
    if not path.exists():
        return []
    rows = json.loads(path.read_text())["speed"]
    width = 3 + len(runtimes) + ("OpenVINO" in runtimes)
    return [row for row in rows if row[0] not in shapes and len(row) == width]


def _choices(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=list(RUNTIMES))


def main() -> None:
    args = timing_arguments(description=__doc__.splitlines()[0], extra=_choices)
    with tempfile.TemporaryDirectory() as tmp:
        quality_rows = quality(Path(tmp) / "digits-swin")
    speed_rows = speed(args.shapes, args.runtimes, args.repeats)
    earlier = kept_rows(args.shapes, args.runtimes)
    speed_rows += earlier
    (RESULTS / "unmerge_swin.json").write_text(
        json.dumps({"quality": quality_rows, "speed": speed_rows}, indent=1) + "\n"
    )
    body = (
        "Quality: a Swin trained here on the digits (demo shape, windows of 16 tokens), the test split, training-free. "
        "'cosine': the final feature map against the unmerged model's (every position, averaged). FLOPs: torch's counter, "
        "the reduction's own matrix products included (on windows of 16 tokens they outweigh what r=2 saves).\n\n"
        + markdown_table(["r per window", "merged branches", "FLOPs", "accuracy", "cosine"], quality_rows)
        + f"\n\nSpeed: random weights, 224 px, batch 8, windows of 49 tokens, {args.threads} threads, {args.repeats} "
        "side-by-side repeats per runtime after 2 warm-up rounds (medians); 'x' is the speed against fp32 in the "
        "same runtime and run. 'MLP only': attention on every token, only the MLP merged (branches='mlp')."
        + (
            f" The {', '.join(sorted({row[0] for row in earlier}))} rows are from an earlier run (not re-run this time)."
            if earlier
            else ""
        )
        + "\n\n"
        + markdown_table(
            ["shape", "model", "FLOPs", *args.runtimes]
            + (["OpenVINO max logit difference"] if "OpenVINO" in args.runtimes else []),
            speed_rows,
        )
    )
    write_report("unmerge_swin", "Token merging within Swin's windows: accuracy, feature maps and speed", body)


if __name__ == "__main__":
    main()
