"""The recipe search on the built-in models, beside the hand-written proof-table rows.

For each model and (runtime, latency budget): ``surgery.search`` with ``--max-drop`` 1 point, and in
the same process, with the same measurement (the search's own Bench: exported, timed in turns with
the original, accuracy in the runtime), the proof table's training-free rows (token_merge r=20,
token_transform and token_prune at half the FLOPs, int8, token_merge r=20 + int8). The table gives
the pick's latency ratio and test accuracy beside the best hand-written row within the same budget
(the most accurate within the latency budget and 1 point on the validation split), and the search's
wall time. The rows that need recovery are not timed here: on these 65-token models none of them is
faster than the original (proof_table.md: agent attention, castling and ecoformer add FLOPs at this
size; bivit runs its +-1 products as float matmuls).

    python benchmarks/search.py [--models digits-vit shapes-vit] [--trials 30] [--batch-size 16] [--repeats 7]
    python benchmarks/search.py --models digits-dinov2 --runtimes openvino torch   # those rows again, the rest kept

Writes benchmarks/results/search.md and search.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import surgery
from surgery.demo.model import default_model
from surgery.recipe_search.data import resolve
from surgery.recipe_search.report import Budget, pick
from surgery.recipe_search.runtimes import correct
from surgery.recipe_search.space import Candidate
from surgery.recipe_search.trial import Bench

from _common import RESULTS, markdown_table, write_report

SETTINGS = [
    ("onnx", 0.7),
    ("onnx", 0.5),
    ("onnx", 0.3),
    ("openvino", 0.7),
    ("openvino", 0.5),
    ("openvino", 0.3),
    ("torch", 0.7),
]
HAND_WRITTEN = {  # the proof table's training-free rows
    "token_merge r=20": (("token_merge", (("r", 20),)),),
    "token_transform flops=0.5": (("token_transform", (("flops", 0.5),)),),
    "token_prune flops=0.5": (("token_prune", (("flops", 0.5),)),),
    "int8 (quantize)": (("quantize", ()),),
    "token_merge r=20 + int8": (("token_merge", (("r", 20),)), ("quantize", ())),
}
MODELS = {"digits-vit": ("digits", "vit"), "shapes-vit": ("shapes", "vit"), "digits-dinov2": ("digits", "dinov2")}


def hand_written(folder: Path, task: str, runtime: str, batch: int, repeats: int) -> tuple[list[dict], float, float]:
    """The hand-written rows measured like the search's candidates (validation and test)."""
    original = surgery.load(folder)
    data = resolve(task, folder, original.config)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(original, runtime, data, batch, Path(tmp), repeats, drop_slower=True)
        for name, steps in HAND_WRITTEN.items():
            record, model = bench.measure(Candidate(steps), None, lambda r: None)
            record["label"] = name
            if model is not None and data.test is not None:
                from surgery.recipe_search.runtimes import compile_for

                run, _ = compile_for(model, runtime, Path(tmp) / "row")
                record["test_accuracy"] = float(correct(run, *data.test).mean())
            rows.append(record)
        original_test = float(correct(bench.run_original, *data.test).mean())
    return rows, bench.accuracy, original_test


def row(entry: dict) -> list[str]:
    chosen, test, best = entry["pick"], entry["pick_test"], entry["best_hand_written"]
    return [
        entry["model"],
        entry["runtime"],
        f"{entry['latency_budget']:g}x",
        chosen["label"] if chosen else "none fits (closest: " + entry["message"].split("closest: ")[-1] + ")",
        f"{chosen['latency_ratio']:.2f}x" if chosen else "-",
        f"{test['pick']:.2%} ({test['difference']}, p {test['mcnemar_p']})" if test else "-",
        best["label"] if best else "none fits",
        f"{best['latency_ratio']:.2f}x" if best else "-",
        f"{best['test_accuracy']:.2%}" if best else "-",
        f"{entry['original_test']:.2%}",
        f"{entry['seconds']:.0f} s ({entry['candidates']})",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["digits-vit"], choices=list(MODELS))
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--runtimes",
        nargs="+",
        choices=sorted({r for r, _ in SETTINGS}),
        help="only these runtimes' rows (the others keep the rows of the last run)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for model_name in args.models:
        task, arch = MODELS[model_name]
        folder = default_model(arch, task_name=task)
        for runtime, latency in [(r, b) for r, b in SETTINGS if not args.runtimes or r in args.runtimes]:
            print(f"{model_name}: {runtime} at {latency}x ...", flush=True)
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as out:
                result = surgery.search(
                    folder,
                    task,
                    runtime=runtime,
                    latency=latency,
                    max_drop=1.0,
                    trials=args.trials,
                    batch_size=args.batch_size,
                    repeats=args.repeats,
                    output=out,
                    progress=False,
                )
            seconds = time.perf_counter() - started
            rows, original_validation, original_test = hand_written(
                folder, task, runtime, args.batch_size, args.repeats
            )
            best = pick(rows, Budget("latency", latency=latency, max_drop=1.0), original_validation)
            chosen = result.chosen
            entry = {
                "model": model_name,
                "runtime": runtime,
                "latency_budget": latency,
                "seconds": round(seconds, 1),
                "candidates": len(result.candidates),
                "pick": chosen and {k: chosen[k] for k in ("label", "latency_ratio", "accuracy")},
                "pick_test": result.test,
                "message": result.message,
                "original_test": original_test,
                "hand_written": [
                    {k: r.get(k) for k in ("label", "status", "latency_ratio", "accuracy", "test_accuracy")}
                    for r in rows
                ],
                "best_hand_written": best and {k: best.get(k) for k in ("label", "latency_ratio", "test_accuracy")},
                "settings": {"trials": args.trials, "batch_size": args.batch_size, "repeats": args.repeats},
                "space_options": {name: list(m["options"]) for name, m in result.summary["space"]["methods"].items()},
            }
            results.append(entry)
            print("   ", row(entry), flush=True)
            write(results, args)  # after every row: a stopped run keeps what it measured
    write(results, args)


def write(results: list[dict], args: argparse.Namespace) -> None:
    """search.json and search.md; models not run this time keep their rows from the last run."""
    path = RESULTS / "search.json"
    earlier = json.loads(path.read_text()) if path.exists() else []
    done = {(e["model"], e["runtime"], e["latency_budget"]) for e in results}
    rerun = {(m, r) for m in args.models for r, _ in SETTINGS if not args.runtimes or r in args.runtimes}
    merged = [
        e
        for e in earlier
        if (e["model"], e["runtime"], e["latency_budget"]) not in done and (e["model"], e["runtime"]) not in rerun
    ]
    merged = merged + results
    merged.sort(
        key=lambda e: (
            list(MODELS).index(e["model"]),
            [s[0] for s in SETTINGS].index(e["runtime"]),
            -e["latency_budget"],
        )
    )
    header = [
        "model",
        "runtime",
        "latency budget",
        "search's pick",
        "pick latency",
        "pick test accuracy (vs original, p)",
        "best hand-written row within budget",
        "its latency",
        "its test accuracy",
        "original test accuracy",
        "search wall time (candidates)",
    ]
    body = (
        f"`surgery.search` with at most 1 point lost on the validation split, {args.trials} trials, batch {args.batch_size}, "
        f"{args.repeats} timed repeats per candidate, beside the proof table's training-free rows measured the same way in "
        "the same process (exported, timed in turns with the original; accuracy in the runtime). Latency ratios are to the "
        "original in the same runtime. Test accuracy: the pick's and each row's, measured once.\n\n"
        + markdown_table(header, [row(e) for e in merged])
        + "\n\nThe first run's rows (before quantize declared its per-layer choices, float_blocks and float_roles, "
        "and before the starting points became a sweep per option) are in [search_first_run.md](search_first_run.md)."
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=1, default=str) + "\n")
    write_report("search", "Recipe search on the built-in models, beside the hand-written rows", body)


if __name__ == "__main__":
    main()
