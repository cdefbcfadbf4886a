"""Where each plugin pays off: its latency in PyTorch eager, ONNX Runtime and OpenVINO, beside fp32 in each.

Every plugin (and the combination the proof table has) rewrites a ViT-B/16 shape (random weights,
seed 0; speed does not depend on trained weights) at the shape where its method is meant to help:
224 px, batch 8 for the compression and token-reduction methods; 896 px (3137 tokens), batch 1 for
the linear attentions (at 224 px their cost is the same as softmax attention's: `attention_speed.md`).
Each model runs in the three runtimes: PyTorch eager (``torch.inference_mode()``), ONNX Runtime (CPU
provider, surgery's ONNX export) and OpenVINO (the same ONNX graph compiled for the CPU with the f32
precision hint, so float rows compare at one precision; int8 layers run int8 either way). In each
runtime and shape, every model is timed side by side with fp32 (medians over repeats after warm-up,
each repeat running every model in turn), and the speed is fp32's time over the model's, so a ratio
says what the method buys in that runtime. A step that refuses a runtime says so (its reason) instead
of a number. int8 is calibrated on two random batches.

    python benchmarks/runtime_speed.py [--repeats 5] [--threads 2] [--only NAME]

Writes benchmarks/results/runtime_speed.md and .json; ``benchmarks/proof_table.py`` runs the same
measurement for its "pays off in" column.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import surgery
from surgery.publish.export import ExportError, export, refuse_unexportable

from _common import RESULTS, markdown_table, time_side_by_side, vit_base, write_report

RUNTIMES = ("PyTorch eager", "ONNX Runtime", "OpenVINO")
SHAPES = {224: 8, 896: 1}  # image side -> batch
PAYS_OFF = 1.05  # a ratio below this is "no faster" on a shared, noisy machine


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    steps: tuple[Any, ...]
    size: int = 224


CASES = (
    Case("ggem", ("ggem",)),
    Case("token_merge r=16", (("token_merge", {"r": 16}),)),
    Case("token_transform flops=0.5", (("token_transform", {"flops": 0.5}),)),
    Case("token_prune flops=0.5", (("token_prune", {"flops": 0.5}),)),
    Case("int8 (quantize)", ("quantize",)),
    Case("token_merge r=16 + int8", (("token_merge", {"r": 16}), "quantize")),
    Case("bivit W1A32", (("bivit", {"activations": "full"}),)),
    Case("bivit W1A1", ("bivit",)),
    Case("agent_attention", (("agent_attention", {"layers": "all"}),), size=896),
    Case("castling", (("castling", {"layers": "all"}),), size=896),
)


def build(case: Case | None, size: int, calibration: list[torch.Tensor]) -> torch.nn.Module:
    model = vit_base(image_size=size)
    if case is None:
        return model
    quantizes = any((s if isinstance(s, str) else s[0]) == "quantize" for s in case.steps)
    return surgery.apply(model, list(case.steps), calibration=calibration if quantizes else None).eval()


def measure(cases: tuple[Case, ...] = CASES, repeats: int = 5, log: Callable[[str], None] = print) -> dict[str, Any]:
    """{"fp32 @ SIZE": ..., case name: {"size", "batch", runtime: seconds | refusal text}}."""
    import onnxruntime as ort
    import openvino as ov

    results: dict[str, Any] = {}
    for size in sorted({c.size for c in cases}):
        batch = SHAPES[size]
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
        calibration = [torch.randn(max(batch, 2), 3, size, size, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
        group = {f"fp32 @ {size} px": None, **{c.name: c for c in cases if c.size == size}}
        seconds: dict[str, dict[str, Any]] = {name: {"size": size, "batch": batch} for name in group}
        with tempfile.TemporaryDirectory() as tmp:
            models, onnx_files = {}, {}
            for name, case in group.items():
                log(f"  building and exporting {name} ({size} px) ...")
                models[name] = build(case, size, calibration)
                onnx_files[name] = export(models[name], Path(tmp) / f"m{len(onnx_files)}", to="onnx", batch=min(batch, 2)).path
                try:
                    refuse_unexportable(models[name], "openvino")
                except ExportError as error:
                    seconds[name]["OpenVINO"] = "refused: " + str(error).splitlines()[-1].strip(" -")
            log(f"  timing PyTorch eager ({size} px) ...")
            with torch.inference_mode():
                timed = time_side_by_side({n: (lambda m=m: m(pixel_values=x)) for n, m in models.items()}, repeats=repeats)
            _record(seconds, "PyTorch eager", timed)
            models.clear()
            gc.collect()
            log(f"  timing ONNX Runtime ({size} px) ...")
            sessions = {n: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for n, p in onnx_files.items()}
            feed = {"pixel_values": x.numpy()}
            _record(seconds, "ONNX Runtime", time_side_by_side({n: (lambda s=s: s.run(None, feed)) for n, s in sessions.items()},
                                                              repeats=repeats))
            sessions.clear()
            log(f"  timing OpenVINO ({size} px) ...")
            core = ov.Core()
            compiled = {n: core.compile_model(str(p), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
                        for n, p in onnx_files.items() if "OpenVINO" not in seconds[n]}
            _record(seconds, "OpenVINO", time_side_by_side({n: (lambda c=c: c(x.numpy())) for n, c in compiled.items()},
                                                          repeats=repeats))
            compiled.clear()
            gc.collect()
        for name in group:
            seconds[name]["baseline"] = f"fp32 @ {size} px"
        results.update(seconds)
    return results


def _record(seconds: dict[str, dict[str, Any]], runtime: str, timed: dict[str, float]) -> None:
    for name, value in timed.items():
        seconds[name][runtime] = value


def speed(results: dict[str, Any], name: str, runtime: str) -> float | str:
    """fp32's time over the model's in ``runtime`` (same shape), or the refusal text."""
    value = results[name].get(runtime)
    if not isinstance(value, float):
        return value if value is not None else "not measured"
    return results[results[name]["baseline"]][runtime] / value


def pays_off(results: dict[str, Any], name: str) -> str:
    """The runtime where the method is fastest against fp32 (with its ratio), or that it is nowhere."""
    ratios = {rt: speed(results, name, rt) for rt in RUNTIMES}
    best = max((rt for rt in RUNTIMES if isinstance(ratios[rt], float)), key=lambda rt: ratios[rt], default=None)
    if best is None or ratios[best] < PAYS_OFF:
        return "no faster in any runtime here" + (f" (best: {best} {ratios[best]:.2f}x)" if best else "")
    return f"{best} {ratios[best]:.2f}x"


def table(results: dict[str, Any]) -> str:
    rows = []
    for name, record in results.items():
        cells = [name, f"{record['size']} px, batch {record['batch']}"]
        for runtime in RUNTIMES:
            value, ratio = record.get(runtime), speed(results, name, runtime)
            cells.append(f"{value * 1000:.0f} ms ({ratio:.2f}x)" if isinstance(value, float) else str(ratio))
        cells.append("-" if name.startswith("fp32") else pays_off(results, name))
        rows.append(cells)
    return markdown_table(["model", "shape", *(f"{rt} (vs fp32)" for rt in RUNTIMES), "pays off in"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", help="run only the cases whose name contains this text")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = tuple(c for c in CASES if not args.only or args.only in c.name)
    results = measure(cases, repeats=args.repeats)
    (RESULTS / "runtime_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    body = (
        f"ViT-B/16 shape (random weights), {args.threads} threads, {args.repeats} side-by-side repeats after 2 "
        "warm-up rounds (medians), each runtime and shape timed as one group; ONNX: surgery's export; OpenVINO: "
        f"that ONNX graph compiled with the f32 precision hint. A method pays off where its ratio is >= {PAYS_OFF}x.\n\n"
        + table(results)
    )
    write_report("runtime_speed", "Where each plugin pays off: PyTorch eager, ONNX Runtime, OpenVINO", body)


if __name__ == "__main__":
    main()
