"""The main job, end to end on the built-in digits model (``surgery demo``).

Build (once) or load the default model, measure it, plan and apply the surgery, measure again,
save with the recipe, reload both ways (``surgery.load`` and plain ``from_pretrained``) and check
the logits are identical, then revert the reloaded copy and check it is the original model again.
Results go to ``<output>/demo_results.json``; the figures go to ``surgery_results.json`` and the
model card (README.md) is generated from them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageClassification

import surgery
from surgery.cards import card
from surgery.cli import save_model
from surgery.data import digits_for
from surgery.demo_model import default_model
from surgery.evaluation import predict_logits, top1
from surgery.measure import DIGITS_DESCRIPTION, record, runtime_figures


def run_demo(arch: str, output: Path, plugins: list[str], specs: Callable[[list[str]], list[Any]]) -> int:
    folder = default_model(arch)
    print(f"[1/5] default model: {folder}")
    model = surgery.load(folder)
    pixel_values, labels = digits_for(folder)
    baseline_logits = predict_logits(model, pixel_values)
    before = top1(baseline_logits, labels)
    print(f"      test accuracy {before:.2%} on {len(labels)} digits")

    steps = specs(plugins)
    print("[2/5] " + str(surgery.plan(model, steps)).replace("\n", "\n      "))
    surgery.apply(model, steps)
    saved_logits = predict_logits(model, pixel_values)
    after = top1(saved_logits, labels)
    print(f"[3/5] applied; test accuracy right after surgery (no training): {after:.2%}")

    save_model(model, output, source=folder)
    via_load = predict_logits(surgery.load(output), pixel_values)
    plain = AutoModelForImageClassification.from_pretrained(output)
    via_plain = predict_logits(plain, pixel_values)
    exact_load, exact_plain = torch.equal(via_load, saved_logits), torch.equal(via_plain, saved_logits)
    print(f"[4/5] saved to {output}; reload identical: surgery.load {exact_load}, from_pretrained {exact_plain}")

    reverted = None
    if all(surgery.get_host().method(s.plugin).reversible for s in surgery.history(plain)):
        surgery.revert(plain)
        reverted = torch.equal(predict_logits(plain, pixel_values), baseline_logits)
        print(f"[5/5] reverted the reloaded model; identical to the original: {reverted}")
    else:
        print("[5/5] a step is one-way; revert skipped")

    record(output, {
        "accuracy": after,
        "accuracy_before": before,
        "latency_ms": runtime_figures(model)["latency_ms"],
        "latency_ms_before": runtime_figures(surgery.load(folder))["latency_ms"],
        "dataset": DIGITS_DESCRIPTION,
    })
    print(f"      model card: {card(output, model_id=Path(output).name)}")
    results = {
        "model": str(folder),
        "steps": [step.to_dict() for step in surgery.history(model)],
        "accuracy_before": before,
        "accuracy_after_surgery": after,
        "reload_identical": {"surgery.load": exact_load, "from_pretrained": exact_plain},
        "revert_identical": reverted,
        "note": "accuracy after surgery is training-free; recovery fine-tuning restores it",
    }
    (Path(output) / "demo_results.json").write_text(json.dumps(results, indent=2) + "\n")
    ok = exact_load and exact_plain and reverted is not False
    print("demo " + ("passed" if ok else "FAILED") + f"; results in {Path(output) / 'demo_results.json'}")
    return 0 if ok else 1

