"""The proof table's report for a built-in task other than digits (``--task shapes``): every row's
accuracy after surgery and after recovery with its paired comparison to the original on the same
test images (accuracy difference with a bootstrap 95 % interval, exact McNemar)."""

from __future__ import annotations

import json
from typing import Any

from surgery.evaluation.paired import PAIRED_HEADER, paired_columns

from _common import RESULTS, markdown_table, write_report


def write_task_report(task: str, base: dict[str, Any], rows: list[dict[str, Any]], times: dict[str, float]) -> None:
    from proof_table import SHAPES_EPOCHS, SHAPES_TRAIN, _describe, _pct, unpack  # the table's own helpers

    images = base["images"]
    reference = unpack(base["correct"], images)
    (RESULTS / f"proof_table_{task}.json").write_text(
        json.dumps({"task": task, "original": base, "rows": rows, "latency_s": times}, indent=2) + "\n"
    )
    table = [
        [
            "original",
            "-",
            _pct(base["accuracy"]),
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            f"{base['gflops'] * 1e3:.1f}",
            "1.00x",
            f"{base['checkpoint_mb']:.2f}",
            f"{times['original'] * 1e3:.0f}",
            "1.00x",
        ]
    ]
    for r in rows:
        surgery_cells = paired_columns(reference, unpack(r["correct"]["after_surgery"], images))
        recovered = r["correct"].get("after_recovery")
        recovery_cells = ["-"] * 3 if recovered is None else paired_columns(reference, unpack(recovered, images))
        table.append(
            [
                r["name"],
                " -> ".join(_describe(s) for s in r["steps"]),
                _pct(r["after_surgery"]),
                *surgery_cells,
                _pct(r["after_recovery"]),
                *recovery_cells,
                _pct(r["validation"]),
                f"{r['gflops'] * 1e3:.1f}",
                f"{base['gflops'] / r['gflops']:.2f}x",
                f"{r['checkpoint_mb']:.2f}",
                f"{times[r['name']] * 1e3:.0f}",
                f"{times['original'] / times[r['name']]:.2f}x",
            ]
        )
    header = [
        "row",
        "steps",
        "after surgery",
        *(f"{h} (surgery)" for h in PAIRED_HEADER),
        "after recovery",
        *(f"{h} (recovery)" for h in PAIRED_HEADER),
        "validation (chosen lr)",
        "MFLOPs/image",
        "FLOPs reduction",
        "checkpoint MB",
        "latency ms (64 images)",
        "speed-up",
    ]
    recipes = "\n".join(
        f"- {r['name']}: {json.dumps(r['recipe'])} ({r['recovery_seconds']} s)" for r in rows if r["recipe"]
    )
    body = (
        f"The proof table's rows on the built-in {task} ViT (`surgery demo-model --task {task}`: 6 blocks, width 128, "
        f"65 tokens at 64x64 px, patch 8; shipped with the package), {images} test images (1 image = {100 / images:.2g} pt). "
        f"Each accuracy is compared with the original's on the same images: the difference with a bootstrap 95 % "
        f"interval, the images only the row gets right / only the original gets right, and the exact McNemar p. "
        f"Recovery: `surgery.recover`, distillation from the original on the first {SHAPES_TRAIN} training images for "
        f"{SHAPES_EPOCHS} epochs (one of them warm-up where the recipe warms up new parameters): a budget for 2 CPU "
        f"cores, far below the digits table's 10-30 epochs, so the recovered figures are a floor, not what each method "
        f"reaches; the learning rate is chosen on the 2,000 validation images. int8 rows quantize after recovery, "
        f"calibrated on 256 training images. Latency: one batch of 64, median over repeats, side by side in one run "
        f"(PyTorch eager). Training results depend on the CPU.\n\n"
        + markdown_table(header, table)
        + "\n\nRecovery recipes (`surgery.recover` options):\n\n"
        + recipes
    )
    write_report(f"proof_table_{task}", f"Proof table on the {task} task: paired against the original", body)
