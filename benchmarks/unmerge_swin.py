"""Token reduction within Swin's windows (``unmerge=True`` on Swin): accuracy, feature maps and speed.

Quality, training-free, on two Swins trained here (the figures vary a little across CPUs): on the digits (the
built-in demo shape: 32 px, patch 4, an 8 x 8 map, windows of 4 x 4 = 16 tokens, depths 2, 2) and on the proving
ground's shapes task (64 px, patch 4: windows of 8 x 8 = 64 tokens, closer to Swin-T's 49; trained once, about 16
minutes on 2 cores, and cached), each on its test split: for each r (tokens reduced per window) and reduced branches
(both; the MLP only, ``branches="mlp"``) of each token reduction (merging, pruning, Token Transforming), and for
merging both branches in the first or the last stage's blocks only (``r_per_layer``: which stage loses accuracy), the
measured FLOPs ratio (torch's counter), the accuracy with the paired comparison to the original (bootstrap interval,
McNemar), and the cosine similarity of the final feature map
(``last_hidden_state``) to the unmerged model's, averaged over positions and images.

Speed, on Swin-T and Swin-B shapes (random weights; speed does not depend on them; windows of 7 x 7 = 49
tokens, so r=24 merges about half of each window), 224 px, batch 8: PyTorch eager (``torch.inference_mode()``),
ONNX Runtime and OpenVINO (f32), each runtime's variants timed side by side with its fp32 model in one run
(medians over repeats after warm-up). The rows of a shape left out by ``--shapes`` (and the quality table of a
task left out by ``--quality``) are kept from the previous results, and the report says so.

    python benchmarks/unmerge_swin.py [--repeats 5] [--threads 2] [--shapes Swin-T Swin-B] [--quality digits shapes]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import tempfile
from pathlib import Path

import torch

import surgery
from surgery.data.digits import digits_split, encode
from surgery.demo.model import build_digits_model
from surgery.demo.zoo import image_processor
from surgery.evaluation.flops import model_flops
from surgery.evaluation.paired import PAIRED_HEADER, correct_of, paired_columns

from _common import RESULTS, markdown_table, time_side_by_side, timing_arguments, write_report

QUALITY_R = (2, 4, 6, 8)
SPEED_R = (8, 16, 24)
MLP_R = (16, 24)  # branches="mlp": attention on every token, only the MLP merged
OTHER_R = 24  # token_prune and token_transform within the windows (scored by every token's attention)
REDUCTIONS = ("token_merge", "token_prune", "token_transform")
SHAPES = {
    "Swin-T": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
    "Swin-B": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32]),
}
RUNTIMES = ("PyTorch eager", "ONNX Runtime", "OpenVINO")


def quality(
    original: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, r_values: tuple[int, ...]
) -> list[list[object]]:
    """Training-free rows for ``original`` on ``(x, y)``: for each merged branch choice and r per window, the FLOPs
    ratio, the accuracy, the final feature map's cosine to the unmerged model's, and the paired comparison with the
    original on the same images (the difference with its bootstrap interval, the images only it / only the original
    gets right, McNemar's p)."""
    original = original.eval()

    def run(model):
        with torch.inference_mode():
            logits = torch.cat([model(pixel_values=batch).logits for batch in x.split(250)])
            features = torch.cat([model.swin(pixel_values=batch).last_hidden_state for batch in x[:1000].split(250)])
        return correct_of(logits, y), features

    base, reference = run(original)
    base_flops = model_flops(original, x[:1])

    def row(plugin: str, label: str, options: dict) -> list[object]:
        branches = options.get("branches", "both")
        print(f"quality: {plugin} {label} {branches} ...", flush=True)
        model = surgery.apply(copy.deepcopy(original), [(plugin, {"unmerge": True, **options})]).eval()
        hits, merged = run(model)
        cosine = float(torch.nn.functional.cosine_similarity(merged, reference, dim=-1).mean())
        flops = model_flops(model, x[:1]) / base_flops
        return [
            plugin,
            label,
            branches,
            f"{flops:.2f}",
            f"{hits.mean():.2%}",
            f"{cosine:.4f}",
            *paired_columns(base, hits),
        ]

    rows = [["original", "-", "-", "1.00", f"{base.mean():.2%}", "1.0000", "-", "-", "-"]]
    for plugin, branches, r in itertools.product(REDUCTIONS, ("both", "mlp"), r_values):
        rows.append(row(plugin, f"r={r}", {"r": r, "branches": branches}))
    depths = list(original.config.depths)
    for stage, r in itertools.product(STAGES, r_values[1:]):  # token_merge, both branches, in one stage's blocks only
        chosen = STAGES[stage] % len(depths)
        schedule = [r if i == chosen else 0 for i, depth in enumerate(depths) for _ in range(depth)]
        rows.append(row("token_merge", f"r={r}, {stage} stage only", {"r_per_layer": schedule}))
    return rows


STAGES = {"first": 0, "last": -1}  # a schedule that reduces in one stage's blocks (r_per_layer), the others whole


def digits_quality() -> list[list[object]]:
    """On a Swin trained here on the digits (the demo shape: windows of 16 tokens), the test split."""
    with tempfile.TemporaryDirectory() as tmp:
        build_digits_model(Path(tmp), arch="swin", progress=False)
        original = surgery.load(tmp)
    _, test = digits_split()
    return quality(original, *encode(test, image_processor(32)), QUALITY_R)


def shapes_quality() -> list[list[object]]:
    """On the proving ground's Swin (windows of 64 tokens), the 5,000 test images."""
    from surgery.data.tasks import task

    folder = shapes_swin()
    shapes = task("shapes")
    return quality(surgery.load(folder), *encode(shapes.split("test"), image_processor(shapes.image_size)), SHAPES_R)


SHAPES_SWIN = dict(patch_size=4, window_size=8)  # 64 px: a 16 x 16 map in windows of 8 x 8 = 64 tokens, then 8 x 8
SHAPES_EPOCHS = 5
SHAPES_R = (8, 16, 24, 32)  # of 64 tokens per window (Swin-T's r=24 merges about half of its 49)


def shapes_swin(epochs: int = SHAPES_EPOCHS) -> Path:
    """The proving ground's Swin: the "proving" size (width 64 then 128, depths 2, 4) on the shapes task at patch 4
    with windows of 64 tokens (the shipped shapes ViT's recipe otherwise), trained here once and cached (the
    weights vary across CPUs); its test accuracy is in the folder's eval_results.json."""
    from surgery.demo.model import EVAL_FILE, build_task_model, cache_dir

    folder = cache_dir() / "models" / f"shapes-swin-w{SHAPES_SWIN['window_size']}-e{epochs}"
    if not (folder / EVAL_FILE).exists():
        print(f"training the shapes Swin ({epochs} epochs; cached in {folder}) ...", flush=True)
        build_task_model(folder, "shapes", "swin", epochs=epochs, **SHAPES_SWIN)
    return folder


def swin(shape: str, r: int | None, branches: str = "both", plugin: str = "token_merge"):
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(0)
    model = SwinForImageClassification(SwinConfig(image_size=224, window_size=7, **SHAPES[shape])).eval()
    options = {"r": r, "unmerge": True, "branches": branches}
    return model if r is None else surgery.apply(model, [(plugin, options)])


def speed(shapes: list[str], runtimes: list[str], repeats: int, log=print) -> list[list[object]]:
    import onnxruntime as ort
    import openvino as ov

    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    rows = []
    for shape in shapes:
        variants = {
            "fp32": (None, "both", "token_merge"),
            **{f"unmerge r={r}": (r, "both", "token_merge") for r in SPEED_R},
            **{f"unmerge r={r}, MLP only": (r, "mlp", "token_merge") for r in MLP_R},
            **{f"{plugin} r={OTHER_R}": (OTHER_R, "both", plugin) for plugin in REDUCTIONS if plugin != "token_merge"},
        }
        names = list(variants)
        models = {name: swin(shape, *variant) for name, variant in variants.items()}
        flops = {name: model_flops(m, x[:1]) for name, m in models.items()}
        timed: dict[str, dict[str, float]] = {}
        differences: dict[str, float] = {}
        onnx_differences: dict[str, float] = {}
        with tempfile.TemporaryDirectory() as tmp:
            if "PyTorch eager" in runtimes:
                log(f"{shape}: timing PyTorch eager ...")
                with torch.inference_mode():
                    timed["PyTorch eager"] = time_side_by_side(
                        {n: (lambda m=m: m(pixel_values=x)) for n, m in models.items()}, repeats=repeats
                    )
            if "ONNX Runtime" in runtimes:
                log(f"{shape}: exporting and timing ONNX Runtime ...")
                sessions = {}
                for i, (n, m) in enumerate(models.items()):
                    # near-equal importance scores of random weights may rank otherwise in another runtime's float
                    # rounding (another kept set): timed anyway, the difference recorded
                    result = surgery.export(m, Path(tmp) / f"onnx-{i}", to="onnx", batch=8, check=False)
                    onnx_differences[n] = result.max_abs_diff
                    sessions[n] = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
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
            if "ONNX Runtime" in runtimes:
                row.append(f"{onnx_differences[name]:.1e}")
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
    onnx_column = "ONNX Runtime" in runtimes
    width = 3 + len(runtimes) + onnx_column + ("OpenVINO" in runtimes)
    if onnx_column:  # rows from before the ONNX difference column: "-" there
        rows = [
            row if len(row) == width else [*row[: 3 + len(runtimes)], "-", *row[3 + len(runtimes) :]] for row in rows
        ]
    return [row for row in rows if row[0] not in shapes and len(row) == width]


def _choices(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES), help="none: no speed run")
    parser.add_argument("--quality", nargs="*", default=["digits", "shapes"], choices=["digits", "shapes"])
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=list(RUNTIMES))


QUALITY = {"digits": digits_quality, "shapes": shapes_quality}
QUALITY_HEADER = ["method", "r per window", "reduced branches", "FLOPs", "accuracy", "cosine", *PAIRED_HEADER]
QUALITY_TEXT = {
    "digits": "a Swin trained here on the digits (the demo shape: an 8 x 8 map, windows of 4 x 4 = 16 tokens, depths "
    "2, 2; the digits recipe), the 360 test digits",
    "shapes": "the proving ground's Swin, trained here on the shapes task (64 px, patch 4: a 16 x 16 map in windows "
    "of "
    f"8 x 8 = 64 tokens, then an 8 x 8 map in one window; width 64 then 128, depths 2, 4; {SHAPES_EPOCHS} epochs of "
    "the shapes ViT's recipe), the 5,000 test images",
}


def main() -> None:
    args = timing_arguments(description=__doc__.splitlines()[0], extra=_choices)
    path = RESULTS / "unmerge_swin.json"
    earlier_results = json.loads(path.read_text()) if path.exists() else {}
    qualities = {}
    for name in QUALITY:
        if name in args.quality:
            qualities[name] = QUALITY[name]()
        elif len(earlier_results.get(f"quality_{name}", [[]])[0]) == len(QUALITY_HEADER):
            qualities[name] = earlier_results[f"quality_{name}"]  # kept from the previous run
    speed_rows = speed(args.shapes, args.runtimes, args.repeats)
    earlier = kept_rows(args.shapes, args.runtimes)
    speed_rows += earlier
    path.write_text(
        json.dumps({**{f"quality_{k}": v for k, v in qualities.items()}, "speed": speed_rows}, indent=1) + "\n"
    )
    body = "".join(
        f"Quality ({name}{'' if name in args.quality else ', from an earlier run'}): {QUALITY_TEXT[name]}, "
        "training-free. 'cosine': the final feature map against the unmerged model's (every position, averaged, "
        "on the first 1,000 images). FLOPs: torch's counter, the reduction's own matrix products included. The "
        "paired columns compare each row with the original on the same images.\n\n"
        + markdown_table(QUALITY_HEADER, rows)
        + "\n\n"
        for name, rows in qualities.items()
    )
    body += (
        f"Speed: random weights, 224 px, batch 8, windows of 49 tokens, {args.threads} threads, {args.repeats} "
        "side-by-side repeats per runtime after 2 warm-up rounds (medians); 'x' is the speed against fp32 in the "
        "same runtime and run. 'MLP only': attention on every token, only the MLP merged (branches='mlp'). "
        f"token_prune and token_transform r={OTHER_R}: both branches reduced within the windows, tokens scored by the "
        "attention every token of the window pays them (no cls token)."
        + (
            f" The {', '.join(sorted({row[0] for row in earlier}))} rows are from an earlier run (not re-run this "
            "time, maybe on another CPU: compare their ratios with each other, not with this run's)."
            if earlier
            else ""
        )
        + "\n\n"
        + markdown_table(
            ["shape", "model", "FLOPs", *args.runtimes]
            + (["ONNX max logit difference"] if "ONNX Runtime" in args.runtimes else [])
            + (["OpenVINO max logit difference"] if "OpenVINO" in args.runtimes else []),
            speed_rows,
        )
    )
    write_report("unmerge_swin", "Token reduction within Swin's windows: accuracy, feature maps and speed", body)


if __name__ == "__main__":
    main()
