"""The main job, end to end on a built-in model (``surgery demo [--task digits|shapes]``).

Build (once) or load the default model, measure it, plan and apply the surgery, measure again,
check that ``revert`` gives back the original exactly, recover the accuracy with distillation
(``surgery.recover``), save with the recipe, reload both ways (``surgery.load`` and plain
``from_pretrained``) and check the logits are identical, then write the model card. Results go to
``<output>/demo_results.json``; the figures go to ``surgery_results.json`` and the card (README.md)
is generated from them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageClassification

import surgery
from surgery.checkpoint.saving import save_from
from surgery.core.history import portable_source
from surgery.core.specs import configs_from_text
from surgery.data.imagesets import task_dataset
from surgery.data.processor import load_processor
from surgery.data.tasks import DEFAULT_TASK, task_tensors
from surgery.demo.model import default_model
from surgery.evaluation.accuracy import predict_logits, top1
from surgery.evaluation.measure import describe_data, record, runtime_figures
from surgery.publish.cards import card
from surgery.recovery import recover

# The recovery recipe for ggem; benchmarks/proof_table.py starts from it and chose lr 1e-3 on the validation split.
DEMO_RECOVERY = {"epochs": 15, "warmup_epochs": 2, "lr": 1e-3, "shift": 0.125}
# per task: the recipe, and how many training images recovery sees (None: all)
TASK_RECOVERY = {
    "digits": (DEMO_RECOVERY, None),
    "shapes": ({"epochs": 2, "warmup_epochs": 1, "lr": 5e-4, "shift": 0.125}, 6000),
}


DEFAULT_PLUGINS = ["ggem"]  # the demo's surgery when no --plugin is given


def run_demo(
    arch: str,
    output: Path,
    plugins: list[str] | None = None,
    specs: Callable[[list[str]], list[Any]] = configs_from_text,
    recovery_epochs: int | None = None,
    task_name: str = DEFAULT_TASK,
) -> int:
    plugins = plugins or DEFAULT_PLUGINS
    folder = default_model(arch, task_name=task_name)
    print(f"[1/6] default model: {folder}")
    teacher = surgery.load(folder)
    model = surgery.load(folder)
    pixel_values, labels = task_tensors(folder, "test", task_name)
    baseline_logits = predict_logits(model, pixel_values)
    before = top1(baseline_logits, labels)
    print(f"      test accuracy {before:.2%} on {len(labels)} {task_name} test images")

    steps = specs(plugins)
    print("[2/6] " + str(surgery.plan(model, steps)).replace("\n", "\n      "))
    surgery.apply(model, steps)
    after = top1(predict_logits(model, pixel_values), labels)
    print(f"[3/6] applied; test accuracy right after surgery (no training): {after:.2%}")

    reverted = None
    if all(surgery.get_host().method(s.plugin).reversible for s in surgery.history(model)):
        undone = surgery.revert(copy.deepcopy(model))
        reverted = torch.equal(predict_logits(undone, pixel_values), baseline_logits)
        print(f"[4/6] reverted a copy; identical to the original: {reverted}")
    else:
        print("[4/6] a step is one-way; revert skipped")

    recipe, limit = TASK_RECOVERY[task_name]
    options = {**recipe, **({"epochs": recovery_epochs} if recovery_epochs is not None else {})}
    print(
        f"[5/6] recovering with distillation from the original: {options}"
        + (f", on the first {limit} training images" if limit else "")
    )
    processor = load_processor(folder)
    # per-epoch accuracy on the validation split; the test split is measured once, below
    train, validation = task_dataset(task_name, "train", limit), task_dataset(task_name, "validation")
    result = recover(model, teacher, train, validation, processor=processor, **options)
    saved_logits = predict_logits(model, pixel_values)
    recovered = top1(saved_logits, labels)
    print(f"      test accuracy after recovery: {recovered:.2%} ({result.seconds:.0f} s)")

    save_from(model, output, source=folder)
    via_load = predict_logits(surgery.load(output), pixel_values)
    plain = AutoModelForImageClassification.from_pretrained(output)
    via_plain = predict_logits(plain, pixel_values)
    exact_load, exact_plain = torch.equal(via_load, saved_logits), torch.equal(via_plain, saved_logits)
    print(f"[6/6] saved to {output}; reload identical: surgery.load {exact_load}, from_pretrained {exact_plain}")

    record(
        output,
        {
            **result.figures(str(folder), task_name, describe_data(task_name, "validation", len(validation))),
            # the headline figures are the test split's, measured once; the Recovery section's are validation
            "accuracy": recovered,
            "accuracy_before": before,
            "accuracy_after_surgery": after,
            "dataset": describe_data(task_name, "test", len(labels)),
            "latency_ms": runtime_figures(model)["latency_ms"],
            "latency_ms_before": runtime_figures(teacher)["latency_ms"],
        },
    )
    print(f"      model card: {card(output, model_id=Path(output).name)}")
    results = {
        "model": portable_source(str(folder)),  # the built-in model by name: out/ may be pushed as it is
        "task": task_name,
        "steps": [step.to_dict() for step in surgery.history(model)],
        "accuracy_before": before,
        "accuracy_after_surgery": after,
        "accuracy_after_recovery": recovered,
        "recovery": result.to_dict(),
        "reload_identical": {"surgery.load": exact_load, "from_pretrained": exact_plain},
        "revert_identical": reverted,
    }
    (Path(output) / "demo_results.json").write_text(json.dumps(results, indent=2) + "\n")
    ok = exact_load and exact_plain and reverted is not False
    print("demo " + ("passed" if ok else "FAILED") + f"; results in {Path(output) / 'demo_results.json'}")
    return 0 if ok else 1
