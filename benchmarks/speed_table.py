"""The speed table: every method in every runtime, beside fp32 and the peer in the same run, and where it pays off.

Each method (and the combination the proof table has) rewrites a ViT-B/16 shape (random weights, seed 0;
speed does not depend on trained weights) at the shape it is meant for: 224 px, batch 8 for compression and
token reduction; 896 px (3137 tokens), batch 1 for the linear attentions (at 224 px their cost is softmax
attention's: attention_speed.md). Each model runs in four runtimes:
- PyTorch eager (``torch.inference_mode()``);
- PyTorch compiled: ``torch.compile`` (Inductor) with ``torch._inductor.config.freezing = True`` (weights as
  constants, so Inductor prepacks them); the first call compiles, and its seconds are reported apart;
- ONNX Runtime (CPU provider) on surgery's ONNX export;
- OpenVINO: that ONNX graph converted as ``surgery export --to openvino`` converts it (each method's own graph
  rewrite applied: bivit's W1A1 linears as BinaryConvolution, so the IR's batch is fixed), compiled for the CPU
  with the f32 precision hint (float rows compare at one precision; int8 layers run int8 either way).
In each runtime and shape every model is timed side by side with fp32 (medians over repeats after warm-up,
each repeat running every model in turn); a ratio is fp32's time over the model's in that runtime. The peer a
user would pick instead stands in the same run: for int8, ``torch.ao.quantization.quantize_dynamic`` (eager),
torchao's int8 (compiled, when installed), Optimum's ``ORTQuantizer`` dynamic (ONNX Runtime; the Optimum
extra) and NNCF's ``nncf.quantize`` transformer preset (OpenVINO). No installable peer exists for the other
methods (ToMe's official code is not a package), so they stand against fp32 alone.

"Pays off in" lists the runtimes where a method's ratio is at least ``PAYS_OFF`` (1.05: below it a ratio is
within a shared machine's noise); ``surgery search`` applies the same rule on the user's runtime to leave out
what does not pay off there (``surgery.recipe_search.payoff``). int8 is calibrated on two random batches.

    python benchmarks/speed_table.py [--repeats 5] [--threads 2] [--only NAME ...] [--no-compile] [--report NAME]

Writes benchmarks/results/speed_table.md and .json (``--report`` names another pair: one per CPU kind, as
``speed_table_avx2`` for a CPU without AVX-512 and VNNI, where the int8 kernels differ); ``benchmarks/proof_table.py`` runs the same
measurement for its "pays off in" column.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import surgery
from surgery.publish.export import _onnx_to_openvino, export
from surgery.recipe_search.payoff import PAYS_OFF

from _common import RESULTS, markdown_table, time_side_by_side, vit_base, write_report

RUNTIMES = ("PyTorch eager", "PyTorch compiled", "ONNX Runtime", "OpenVINO")
SHAPES = {224: 8, 896: 1}  # image side -> batch
PEER = "int8 peer"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    steps: tuple[Any, ...]
    size: int = 224


CASES = (
    Case("token_merge r=16", (("token_merge", {"r": 16}),)),
    Case("token_transform flops=0.5", (("token_transform", {"flops": 0.5}),)),
    Case("token_prune flops=0.5", (("token_prune", {"flops": 0.5}),)),
    Case("int8 (quantize)", ("quantize",)),
    Case(
        "int8, everything (quantize attention, patch_embed, classifier)",
        (("quantize", {"attention": "int8", "patch_embed": "int8", "classifier": "int8"}),),
    ),
    Case("token_merge r=16 + int8", (("token_merge", {"r": 16}), "quantize")),
    Case("bivit W1A32", (("bivit", {"activations": "full"}),)),
    Case("bivit W1A1", ("bivit",)),
    Case("ggem", ("ggem",)),
    Case("agent_attention", (("agent_attention", {"layers": "all"}),), size=896),
    Case("castling", (("castling", {"layers": "all"}),), size=896),
    # not ecoformer at 896 px: its ONNX export at 3137 tokens did not finish in 10 minutes on the 2-core machine
)


def build(case: Case | None, size: int, calibration: list[torch.Tensor]) -> torch.nn.Module:
    model = vit_base(image_size=size)
    if case is None:
        return model
    # calibration for every case: quantize's observers, EcoFormer's hash (learned from data, not the first batch)
    return surgery.apply(model, list(case.steps), calibration=calibration).eval()


def peers(
    size: int, calibration: list[torch.Tensor], onnx_fp32: Path | None, tmp: Path, runtimes: tuple[str, ...] = RUNTIMES
) -> dict[str, Any]:
    """The int8 peer in each of ``runtimes``: runtime -> (tool name, runnable thing) or why it is missing."""
    import importlib.util

    out: dict[str, Any] = {
        "PyTorch eager": (
            "torch quantize_dynamic",
            torch.ao.quantization.quantize_dynamic(vit_base(image_size=size), {torch.nn.Linear}, dtype=torch.qint8),
        )
    }
    if importlib.util.find_spec("torchao") is not None:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        model = vit_base(image_size=size)
        quantize_(model, Int8DynamicActivationInt8WeightConfig())
        out["PyTorch compiled"] = ("torchao int8 dynamic", model)
    else:
        out["PyTorch compiled"] = "torchao not installed"
    if "ONNX Runtime" in runtimes:
        try:
            import int8_speed

            out["ONNX Runtime"] = (
                "Optimum ORTQuantizer dynamic",
                int8_speed.optimum_quantize(onnx_fp32.parent, tmp / "dyn", None),
            )
        except ImportError:
            out["ONNX Runtime"] = "Optimum not installed (the transformers 4.57 set has it)"
    if "OpenVINO" in runtimes:
        import nncf
        import openvino as ov

        fp32 = ov.Core().read_model(str(onnx_fp32))
        data = nncf.Dataset([c.numpy() for c in calibration])
        out["OpenVINO"] = (
            "NNCF nncf.quantize (transformer preset)",
            nncf.quantize(fp32, data, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration)),
        )
    return {runtime: found for runtime, found in out.items() if runtime in runtimes}


def measure(
    cases: tuple[Case, ...] = CASES,
    repeats: int = 5,
    log=print,
    runtimes: tuple[str, ...] = RUNTIMES,
    with_peers: bool = True,
    save=None,
) -> dict[str, Any]:
    """{name: {"size", "batch", "baseline", runtime: seconds | text, "compile_s", "peer_tools"}} for fp32 per
    shape, every case and the int8 peer; ``save(results)`` after each shape."""
    import onnxruntime as ort
    import openvino as ov
    from torch._inductor import config as inductor

    results: dict[str, Any] = {}
    for size in sorted({c.size for c in cases}):
        batch = SHAPES[size]
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
        calibration = [
            torch.randn(max(batch, 2), 3, size, size, generator=torch.Generator().manual_seed(s)) for s in (1, 2)
        ]
        base = f"fp32 @ {size} px"
        group = {base: None, **{c.name: c for c in cases if c.size == size}}
        rows: dict[str, dict[str, Any]] = {n: {"size": size, "batch": batch, "baseline": base} for n in group}
        with tempfile.TemporaryDirectory() as tmp:
            models, onnx_files, ir_files = {}, {}, {}
            exported = "ONNX Runtime" in runtimes or "OpenVINO" in runtimes
            for index, (name, case) in enumerate(group.items()):
                log(f"  building{' and exporting' if exported else ''} {name} ({size} px) ...")
                models[name] = build(case, size, calibration)
                if exported:
                    onnx_files[name] = export(
                        models[name], Path(tmp) / f"m{index}", to="onnx", batch=min(batch, 2)
                    ).path
                    ir_files[name], notes = _onnx_to_openvino(
                        onnx_files[name], Path(tmp) / f"ir{index}", models[name], [batch, 3, size, size]
                    )
                    rows[name]["openvino_rewrites"] = notes
            tools: dict[str, Any] = {}
            if with_peers and any("quantize" in str(c.steps) for c in group.values() if c is not None):
                rows[PEER] = {"size": size, "batch": batch, "baseline": base, "peer_tools": {}}
                for runtime, found in peers(size, calibration, onnx_files.get(base), Path(tmp), runtimes).items():
                    if isinstance(found, str):
                        rows[PEER][runtime] = found
                    else:
                        rows[PEER]["peer_tools"][runtime], tools[runtime] = found
            if "PyTorch eager" in runtimes:
                log(f"  timing PyTorch eager ({size} px) ...")
                runs = {n: (lambda m=m: m(pixel_values=x)) for n, m in models.items()}
                if "PyTorch eager" in tools:
                    runs[PEER] = lambda m=tools["PyTorch eager"]: m(pixel_values=x)
                with torch.inference_mode():
                    _record(rows, "PyTorch eager", time_side_by_side(runs, repeats=repeats))
            if "PyTorch compiled" in runtimes:
                compiled_runs = {}
                targets = {**models, **({PEER: tools["PyTorch compiled"]} if "PyTorch compiled" in tools else {})}
                # every model shares its class's forward: one compiled entry each, all kept (no reset between them,
                # and a limit above the default 8, past which Dynamo would run the rest eagerly)
                torch._dynamo.reset()
                torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(targets))
                for name, model in targets.items():
                    log(f"  compiling {name} ({size} px) ...")
                    compiled = torch.compile(model)
                    started = time.perf_counter()
                    try:
                        with inductor.patch(freezing=True), torch.inference_mode():
                            compiled(pixel_values=x)
                    except Exception as error:  # reported in the table
                        rows[name]["PyTorch compiled"] = (
                            f"fails: {type(error).__name__}: {str(error).splitlines()[0][:80]}"
                        )
                        continue
                    rows[name]["compile_s"] = time.perf_counter() - started
                    compiled_runs[name] = lambda c=compiled: c(pixel_values=x)
                log(f"  timing PyTorch compiled ({size} px) ...")
                with inductor.patch(freezing=True), torch.inference_mode():
                    _record(rows, "PyTorch compiled", time_side_by_side(compiled_runs, repeats=repeats))
                torch._dynamo.reset()
            models.clear()
            for runtime in ("PyTorch eager", "PyTorch compiled"):
                tools.pop(runtime, None)
            gc.collect()
            if "ONNX Runtime" in runtimes:
                log(f"  timing ONNX Runtime ({size} px) ...")
                files = {**onnx_files, **({PEER: tools["ONNX Runtime"]} if "ONNX Runtime" in tools else {})}
                sessions = {
                    n: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for n, p in files.items()
                }
                feed = {"pixel_values": x.numpy()}
                _record(
                    rows,
                    "ONNX Runtime",
                    time_side_by_side(
                        {n: (lambda s=s: s.run(None, feed)) for n, s in sessions.items()}, repeats=repeats
                    ),
                )
                sessions.clear()
            if "OpenVINO" in runtimes:
                log(f"  timing OpenVINO ({size} px) ...")
                core = ov.Core()
                compiled_ir = {
                    n: core.compile_model(str(p), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
                    for n, p in ir_files.items()
                }
                if (
                    "OpenVINO" in tools
                ):  # the same precision hint as every other row (its int8 layers run int8 either way)
                    compiled_ir[PEER] = core.compile_model(
                        tools["OpenVINO"], "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
                    )
                _record(
                    rows,
                    "OpenVINO",
                    time_side_by_side(
                        {n: (lambda c=c: c(x.numpy())) for n, c in compiled_ir.items()}, repeats=repeats
                    ),
                )
                compiled_ir.clear()
            gc.collect()
        results.update({(f"{PEER} @ {size} px" if n == PEER else n): r for n, r in rows.items()})
        if save is not None:
            save(results)
    return results


def _record(rows: dict[str, dict[str, Any]], runtime: str, timed: dict[str, float]) -> None:
    for name, value in timed.items():
        rows[name][runtime] = value


def speed(results: dict[str, Any], name: str, runtime: str) -> float | str:
    """fp32's time over the model's in ``runtime`` (same shape), or why there is no number."""
    value = results[name].get(runtime)
    if not isinstance(value, float):
        return value if value is not None else "not measured"
    return results[results[name]["baseline"]][runtime] / value


def pays_off(results: dict[str, Any], name: str) -> str:
    """The runtimes where the method's ratio is at least PAYS_OFF (with the ratios), or that it is nowhere."""
    ratios = {rt: speed(results, name, rt) for rt in RUNTIMES}
    measured = {rt: r for rt, r in ratios.items() if isinstance(r, float)}
    paying = [f"{rt} {r:.2f}x" for rt, r in sorted(measured.items(), key=lambda kv: -kv[1]) if r >= PAYS_OFF]
    if paying:
        return ", ".join(paying)
    best = max(measured, key=measured.get, default=None)
    return "nowhere here" + (f" (best: {best} {measured[best]:.2f}x)" if best else "")


def table(results: dict[str, Any]) -> str:
    rows = []
    for name, record in results.items():
        cells = [name, f"{record['size']} px, batch {record['batch']}"]
        for runtime in RUNTIMES:
            value, ratio = record.get(runtime), speed(results, name, runtime)
            tool = record.get("peer_tools", {}).get(runtime)
            cells.append(
                (f"{tool}: " if tool else "")
                + (f"{value * 1000:.0f} ms ({ratio:.2f}x)" if isinstance(value, float) else str(ratio))
            )
        cells.append("-" if name.startswith(("fp32", PEER)) else pays_off(results, name))
        rows.append(cells)
    return markdown_table(
        ["model", "shape", *(f"{rt} (vs fp32)" for rt in RUNTIMES), f"pays off in (>= {PAYS_OFF}x)"], rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--only", action="append", help="run only the cases whose name contains this text (repeat: any of them)"
    )
    parser.add_argument("--no-compile", action="store_true", help="leave out the PyTorch compiled column")
    parser.add_argument(
        "--size",
        type=int,
        choices=sorted(SHAPES),
        help="run one shape group only, keeping the other group's rows from the last run's speed_table.json",
    )
    parser.add_argument(
        "--report",
        default="speed_table",
        help="the results' name under benchmarks/results "
        "(default speed_table; another CPU kind gets its own, e.g. speed_table_avx2)",
    )
    parser.add_argument(
        "--runtime",
        action="append",
        choices=RUNTIMES,
        help="measure only this runtime (repeat), "
        "keeping the other runtimes' cells of the same rows from the last run's speed_table.json",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = tuple(
        c
        for c in CASES
        if (not args.only or any(text in c.name for text in args.only)) and (args.size is None or c.size == args.size)
    )
    runtimes = tuple(
        rt
        for rt in RUNTIMES
        if not (args.no_compile and rt == "PyTorch compiled") and (not args.runtime or rt in args.runtime)
    )
    started = time.perf_counter()
    saved = RESULTS / f"{args.report}.json"
    kept = json.loads(saved.read_text()) if (args.size or args.runtime) and saved.exists() else {}
    if args.size is not None:
        kept = {n: r for n, r in kept.items() if r["size"] != args.size or args.runtime}

    def merged(done: dict[str, Any]) -> dict[str, Any]:
        out = dict(kept)
        for name, row in done.items():  # measured cells replace the saved ones; the rest of the row stays
            old = {
                k: v
                for k, v in out.get(name, {}).items()
                if not (k in runtimes or k == "compile_s" and "PyTorch compiled" in runtimes)
            }
            out[name] = {**old, **row, "peer_tools": {**old.get("peer_tools", {}), **row.get("peer_tools", {})}}
        return out

    results = merged(
        measure(
            cases,
            repeats=args.repeats,
            runtimes=runtimes,
            save=lambda done: saved.write_text(json.dumps(merged(done), indent=2) + "\n"),
        )
    )
    compile_note = ", ".join(f"{n} {r['compile_s']:.0f} s" for n, r in results.items() if "compile_s" in r)
    body = (
        f"ViT-B/16 shape (random weights), {args.threads} threads, {args.repeats} side-by-side repeats after 2 warm-up "
        "rounds (medians), each runtime and shape timed as one group, the int8 peer in the same group (its tool named "
        "in the cell). Compiled: Inductor with freezing. ONNX: surgery's export; OpenVINO: that graph converted as "
        "`surgery export --to openvino` does (the methods' graph rewrites applied), f32 precision hint. "
        f"A method pays off where its ratio is >= {PAYS_OFF}x; `surgery search` applies that rule on the user's "
        f"runtime. This run: {(time.perf_counter() - started) / 60:.0f} min"
        + (
            f" ({args.size} px only"
            + (
                "; the other shape's rows are from the run before"
                if any(r["size"] != args.size for r in kept.values())
                else ""
            )
            + ")"
            if args.size
            else ""
        )
        + (f" (the cases whose name contains: {', '.join(args.only)})" if args.only else "")
        + (
            f" (measured here: {', '.join(runtimes)}; the other columns are from the run before, the same day)"
            if args.runtime
            else ""
        )
        + ".\n\n"
        + table(results)
        + (f"\n\nFirst-call (compile) seconds: {compile_note}." if compile_note else "")
    )
    write_report(args.report, "The speed table: every method, every runtime, beside fp32 and the peer", body)


if __name__ == "__main__":
    main()
