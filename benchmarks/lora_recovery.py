"""LoRA recovery (PEFT) vs full recovery, side by side in one run.

1. On the built-in digits ViT, for every plugin that recovers: test accuracy after full recovery (the
   proof table's recipe and learning rate) and after LoRA recovery (the same recipe; LoRA's learning
   rate chosen on the validation split from ``LORA_RATES``), with the trainable parameters of each.
2. On a ViT-B/16 shape (random weights, 224 px, batch 8): trainable parameters, time per training step
   (median after warm-up) and the peak memory a step adds, of full vs LoRA recovery, each measured in
   its own process (peak resident memory minus the memory before the first step).

    python benchmarks/lora_recovery.py            # about 25 minutes on 2 CPU cores
    python benchmarks/lora_recovery.py --only ggem --skip-vit-b
    python benchmarks/lora_recovery.py --ablation --only ggem,castling   # rank x targets, each lr chosen on validation

Writes benchmarks/results/lora_recovery.md and .json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import AutoImageProcessor

import surgery
from surgery.data.digits import digits_for
from surgery.data.imagesets import digits_dataset
from surgery.demo.model import default_model
from surgery.evaluation.accuracy import accuracy
from surgery.recovery import recover

from _common import RESULTS, markdown_table, vit_base, write_report
from proof_table import RECIPES

LORA = {"r": 4, "alpha": 8, "targets": ["attention"]}
LORA_RATES = (1e-3, 3e-3)
# plugin steps, the proof table's recipe, and the learning rate the proof table chose for full recovery
CASES = {
    "ggem": (["ggem"], RECIPES["ggem"]),
    "token_merge r=20": ([("token_merge", {"r": 20})], RECIPES["token_merge"]),
    "token_transform flops=0.5": ([("token_transform", {"flops": 0.5})], RECIPES["token_merge"]),
    "token_prune flops=0.5": ([("token_prune", {"flops": 0.5})], RECIPES["token_merge"]),
    "agent_attention": (["agent_attention"], RECIPES["agent_attention"]),
    "castling": (["castling"], RECIPES["castling"]),
    "bivit W1A32": ([("bivit", {"activations": "full"})], RECIPES["bivit_w1a32"]),
    "bivit W1A1": (["bivit"], RECIPES["bivit_w1a1"]),
}


def chosen_rates() -> dict[str, float]:
    """The learning rate of full recovery per row, as the last proof-table run chose it."""
    path = RESULTS / "proof_table.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    return {row["name"]: row["recipe"]["lr"] for row in rows if row.get("recipe")}


def digits_data() -> dict:
    """The digits ViT, its teacher, the test tensors, and the train and validation splits."""
    folder = default_model("vit")
    return {
        "folder": folder,
        "test": digits_for(folder),
        "teacher": surgery.load(folder),
        "processor": AutoImageProcessor.from_pretrained(folder, use_fast=False),
        "train": digits_dataset("train"),
        "validation": digits_dataset("validation"),
    }


def selected(only: str | None) -> list[tuple[str, tuple]]:
    """The CASES rows whose name contains one of the comma-separated texts in ``only``."""
    return [(name, case) for name, case in CASES.items() if not only or any(part in name for part in only.split(","))]


def recovered(data: dict, steps: list, recipe: dict, model=None, **options):
    """The digits model after ``steps`` (or ``model``, already rewritten) and recovery with ``recipe`` and
    ``options``: (model, result)."""
    model = model if model is not None else surgery.apply(surgery.load(data["folder"]), steps)
    result = recover(
        model,
        data["teacher"],
        data["train"],
        data["validation"],
        processor=data["processor"],
        progress=False,
        **{**recipe, **options},
    )
    return model, result


def best_lora(data: dict, steps: list, recipe: dict, lora: dict):
    """LoRA recovery at each of LORA_RATES; the (model, result) with the best validation accuracy (the first on a tie)."""
    runs = [recovered(data, steps, recipe, lora=lora, lr=lr) for lr in LORA_RATES]
    return max(runs, key=lambda run: run[1].accuracy)


def digits_rows(only: str | None) -> list[dict]:
    data = digits_data()
    pixels, labels = data["test"]
    original = accuracy(data["teacher"], pixels, labels)
    rates = chosen_rates()
    rows = []
    for name, (steps, recipe) in selected(only):
        record = {"name": name, "original": original}
        model = surgery.apply(surgery.load(data["folder"]), steps)
        record["after_surgery"] = accuracy(model, pixels, labels)
        model, full = recovered(data, steps, recipe, model, lr=rates.get(name, recipe["lr"]))
        record["full"] = {
            "accuracy": accuracy(model, pixels, labels),
            "lr": full.config["lr"],
            "trainable": full.trainable_parameters,
            "seconds": full.seconds,
        }
        model, result = best_lora(data, steps, recipe, LORA)
        record["lora"] = {
            "accuracy": accuracy(model, pixels, labels),
            "lr": result.config["lr"],
            "trainable": result.trainable_parameters,
            "seconds": result.seconds,
            "adapter_parameters": result.lora["adapter_parameters"],
        }
        record["parameters"] = result.parameters
        print(
            f"{name}: full {record['full']['accuracy']:.2%} ({record['full']['trainable']:,} trained), "
            f"LoRA {record['lora']['accuracy']:.2%} ({record['lora']['trainable']:,} trained)",
            flush=True,
        )
        rows.append(record)
    return rows


VARIANTS = {
    "r=8 attention": {"r": 8, "alpha": 16, "targets": ["attention"]},
    "r=4 attention+mlp": {"r": 4, "alpha": 8, "targets": ["attention", "mlp"]},
    "r=8 attention+mlp": {"r": 8, "alpha": 16, "targets": ["attention", "mlp"]},
}


def ablation(only: str | None) -> None:
    """LoRA rank x targets per row beyond the main table's r=4 attention, each learning rate chosen on
    validation (test measured once per variant)."""
    data = digits_data()
    pixels, labels = data["test"]
    table, records = [], []
    for name, (steps, recipe) in selected(only):
        for variant, lora in VARIANTS.items():
            model, result = best_lora(data, steps, recipe, lora)
            test = accuracy(model, pixels, labels)
            share = result.trainable_parameters / result.parameters
            records.append(
                {
                    "name": name,
                    "variant": variant,
                    "lr": result.config["lr"],
                    "validation": result.accuracy,
                    "test": test,
                    "trainable": result.trainable_parameters,
                    "parameters": result.parameters,
                }
            )
            table.append(
                [
                    name,
                    variant,
                    f"{result.config['lr']:g}",
                    f"{result.accuracy:.2%}",
                    f"{test:.2%}",
                    f"{result.trainable_parameters:,} ({share:.1%} of the model)",
                ]
            )
            print(" | ".join(table[-1]), flush=True)
    body = (
        f"Digits ViT, LoRA through PEFT (merged), alpha = 2r, with the head and norms; learning rate from {LORA_RATES} "
        "chosen on the validation split; test = the 360 test digits.\n\n"
        + markdown_table(["plugin", "LoRA", "lr", "validation", "test", "trained"], table)
    )
    write_report("lora_recovery_ablation", "LoRA recovery: rank and targets", body)
    (RESULTS / "lora_recovery_ablation.json").write_text(json.dumps(records, indent=2) + "\n")


def step_cost(mode: str, steps: int = 6) -> dict:
    """In this process: trainable parameters, median seconds per step and peak memory added (MiB)."""
    teacher = vit_base()
    model = vit_base()
    surgery.apply(model, ["ggem"])
    batch = (torch.randn(8, 3, 224, 224), torch.randint(0, 1000, (8,)))
    data = (batch[0].repeat(steps, 1, 1, 1), batch[1].repeat(steps))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times: list[float] = []

    class Timer(torch.utils.data.Dataset):
        def __len__(self):
            return steps * 8

        def __getitem__(self, index):
            if index % 8 == 0:
                times.append(time.perf_counter())
            return {"pixel_values": data[0][index], "labels": data[1][index]}

    result = recover(
        model,
        teacher,
        torch.utils.data.DataLoader(Timer(), batch_size=8),
        epochs=1,
        progress=False,
        lora=LORA if mode == "lora" else None,
        batch_size=8,
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_step = [b - a for a, b in zip(times, times[1:])][1:]  # the first step warms up
    return {
        "mode": mode,
        "trainable": result.trainable_parameters,
        "parameters": result.parameters,
        "seconds_per_step": statistics.median(per_step),
        "peak_mib_added": peak - before,
    }


def vit_b_rows() -> list[dict]:
    rows = []
    for mode in ("full", "lora"):
        out = subprocess.run(
            [sys.executable, __file__, "--step-cost", mode], capture_output=True, text=True, check=True
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def report(digits: list[dict], vit_b: list[dict]) -> None:
    lines = [
        f"LoRA: {LORA} through PEFT, merged after training; the parameters the surgery added train fully in "
        "both, and LoRA also trains the head and the LayerNorms fully (its default). Same recipe (epochs, "
        f"warm-up, schedule) for both; full recovery at the proof table's learning rate, LoRA's chosen from "
        f"{LORA_RATES} on the validation split. Accuracy on the 360 test digits; training results vary across "
        "CPUs. The digits seconds are wall time of each run while other jobs shared the machine (not a speed "
        "comparison; the ViT-B/16 table is).",
        "",
    ]
    if digits:
        table = [
            [
                r["name"],
                f"{r['original']:.2%}",
                f"{r['after_surgery']:.2%}",
                f"{r['full']['accuracy']:.2%} (lr {r['full']['lr']:g})",
                f"{r['lora']['accuracy']:.2%} (lr {r['lora']['lr']:g})",
                f"{(r['lora']['accuracy'] - r['full']['accuracy']) * 100:+.2f}",
                f"{r['full']['trainable']:,}",
                f"{r['lora']['trainable']:,} ({r['lora']['trainable'] / r['full']['trainable']:.1%})",
                f"{r['full']['seconds']:.0f} / {r['lora']['seconds']:.0f}",
            ]
            for r in digits
        ]
        lines += [
            "## Digits ViT",
            "",
            markdown_table(
                [
                    "plugin",
                    "original",
                    "after surgery",
                    "full recovery",
                    "LoRA recovery",
                    "LoRA - full (pt)",
                    "trained (full)",
                    "trained (LoRA, share of full)",
                    "seconds full / LoRA",
                ],
                table,
            ),
            "",
        ]
    if vit_b:
        full, lora = vit_b
        table = [
            [
                r["mode"],
                f"{r['trainable']:,} ({r['trainable'] / r['parameters']:.1%})",
                f"{r['seconds_per_step']:.2f}",
                f"{r['peak_mib_added']:.0f}",
            ]
            for r in vit_b
        ]
        lines += [
            "## ViT-B/16 shape (ggem; 224 px, batch 8, one step: student + teacher forward, backward, AdamW)",
            "",
            markdown_table(["recovery", "trained parameters", "s / step (median)", "peak memory added (MiB)"], table),
            "",
            f"LoRA vs full: {full['seconds_per_step'] / lora['seconds_per_step']:.2f}x faster per step, "
            f"{full['peak_mib_added'] / max(lora['peak_mib_added'], 1):.2f}x less peak memory added.",
            "",
        ]
    write_report("lora_recovery", "LoRA recovery vs full recovery", "\n".join(lines))
    (RESULTS / "lora_recovery.json").write_text(json.dumps({"digits": digits, "vit_b16": vit_b}, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="digits rows whose name contains one of these comma-separated texts")
    parser.add_argument("--skip-vit-b", action="store_true")
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--ablation", action="store_true", help="rank x targets on the digits rows instead")
    parser.add_argument("--step-cost", choices=["full", "lora"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the report from results/lora_recovery.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.step_cost:
        print(json.dumps(step_cost(args.step_cost)))
        return
    torch.manual_seed(0)
    if args.ablation:
        ablation(args.only)
        return
    if args.report_only:
        saved = json.loads((RESULTS / "lora_recovery.json").read_text())
        report(saved["digits"], saved["vit_b16"])
        return
    vit_b = [] if args.skip_vit_b else vit_b_rows()
    digits = [] if args.skip_digits else digits_rows(args.only)
    report(digits, vit_b)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
