"""``surgery recover``: distillation fine-tuning from the command line, as ``surgery.recover`` does it.

Epochs are monitored on the validation split (``--eval-split``, default ``validation``), which the
training may look at; the test split (``--test-split``, default ``test``) is measured once, after
recovery, for the teacher, the model right after surgery and the recovered model, and is what the
card reports. A dataset without the default splits skips them with a note; a split asked for by name
must exist.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from surgery.cli.commands import _without_adapter

MONITOR_SPLIT, TEST_SPLIT = "validation", "test"


def add_parser(sub: Any, data_help: str) -> None:
    from surgery.recovery import RecoveryConfig

    p = sub.add_parser(
        "recover",
        help="fine-tune a rewritten model with distillation from its original (accelerate)",
        description="Runs on one CPU or GPU as is, and on several with `accelerate launch -m surgery.cli "
        "recover ...`. Epochs are monitored on --eval-split; --test-split is measured once, "
        "after recovery, and is what the card reports.",
    )
    p.add_argument("model", help="a saved rewritten model folder")
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--output", "-o", required=True, help="folder for the recovered model")
    p.add_argument("--teacher", help="the original model (default: the base model recorded in the recipe)")
    p.add_argument("--train-split", default="train")
    p.add_argument(
        "--eval-split",
        default=None,
        help=f"evaluated before and after every epoch (default: "
        f"{MONITOR_SPLIT}, skipped with a note where the data has none); 'none' to skip",
    )
    p.add_argument(
        "--test-split",
        default=None,
        help=f"measured once after recovery and reported (default: "
        f"{TEST_SPLIT}, skipped with a note where the data has none); 'none' to skip",
    )
    p.add_argument("--checkpoint-dir", help="epoch checkpoints (default: OUTPUT/checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --checkpoint-dir")
    p.add_argument(
        "--lora",
        metavar="K=V,...",
        help="train LoRA adapters (PEFT) instead of every weight: "
        "r=8,alpha=16[,dropout=0][,targets=attention+mlp][,merge=false] (merge=false keeps them in OUTPUT/adapter)",
    )
    for name, kind, default in RecoveryConfig.describe_options():
        metavar = "{" + ",".join(x.strip("' ") for x in kind.split("|")) + "}" if "|" in kind else kind.upper()
        p.add_argument("--" + name.replace("_", "-"), dest=name, metavar=metavar, help=f"{kind}, default {default}")
    p.set_defaults(run=cmd_recover)


def _split(data: str, asked: str | None, default: str, role: str, flag: str):
    """``(name, images)`` of the split asked for, or of ``default`` when the data has it; ``(None, None)``
    for 'none' or a missing default (with a note)."""
    from surgery.data.imagesets import load_images
    from surgery.errors import SurgeryError

    if asked == "none":
        return None, None
    try:
        return asked or default, load_images(data, asked or default)
    except SurgeryError as error:
        if asked is not None or "has no split" not in str(error):
            raise
        print(f"surgery: note: {error} No {role} (pass {flag} to name one).", file=sys.stderr)
        return None, None


def cmd_recover(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    import surgery
    from surgery.checkpoint.saving import save_from
    from surgery.data.imagesets import batches, load_images
    from surgery.data.processor import load_processor
    from surgery.evaluation.accuracy import loader_accuracy
    from surgery.evaluation.measure import record
    from surgery.recovery import RecoveryConfig, recover

    config = RecoveryConfig.from_strings({k: v for k, v in _recovery_options(args).items() if v is not None})
    model = surgery.load(_without_adapter(args.model, "recover"))
    teacher_source = args.teacher or _base_model(model, args.model)
    teacher = surgery.load(teacher_source)
    processor = load_processor(args.model)
    train = load_images(args.data, args.train_split)
    monitor_split, monitor = _split(args.data, args.eval_split, MONITOR_SPLIT, "per-epoch evaluation", "--eval-split")
    test_split, test = _split(args.data, args.test_split, TEST_SPLIT, "test measurement", "--test-split")

    def on_test(student) -> float:
        return loader_accuracy(student, batches(test, model.config, processor, 256))

    # before training changes the model (in every process: accelerate's state is set up by recover)
    tested = {"accuracy_before": on_test(model)} if test is not None else {}
    checkpoints = Path(args.checkpoint_dir or Path(args.output) / "checkpoints")
    result = recover(
        model,
        teacher,
        train,
        monitor,
        config,
        processor=processor,
        checkpoint_dir=checkpoints,
        resume=args.resume,
        lora=args.lora,
    )
    if not PartialState().is_main_process:
        return 0
    save_from(model if result.adapter is None else result.adapter, args.output, source=args.model)
    (Path(args.output) / "recovery_log.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    if tested:
        tested.update(
            teacher_accuracy=on_test(teacher), accuracy=on_test(model if result.adapter is None else result.adapter)
        )
    if tested or result.accuracy is not None:
        figures = _figures(
            result, str(teacher_source), args.data, (monitor_split, monitor), (test_split, test), tested
        )
        record(args.output, figures)  # names only, never paths
    shown = tested or {k: getattr(result, k) for k in ("teacher_accuracy", "accuracy_before", "accuracy")}
    where = f" on {test_split}" if tested else (f" on {monitor_split}" if monitor is not None else "")
    figures_text = ", ".join(
        f"{label} {shown[key]:.2%}"
        for label, key in (
            ("teacher", "teacher_accuracy"),
            ("after surgery", "accuracy_before"),
            ("recovered", "accuracy"),
        )
        if shown.get(key) is not None
    )
    print(f"recovered {args.model} in {result.seconds:.0f} s ({figures_text}{where}); saved to {args.output}")
    return 0


def _figures(result: Any, teacher: str, data: str, monitor: tuple, test: tuple, tested: dict[str, float]) -> dict:
    """The card's figures: the test split's, measured once, where there is one; the monitored split's
    (what the epochs saw) under ``recovery.monitored``."""
    from surgery.evaluation.measure import describe_data

    monitored = describe_data(data, monitor[0], len(monitor[1])) if monitor[1] is not None else None
    figures = result.figures(teacher, data, monitored or "")
    if not tested:
        return figures
    described = describe_data(data, test[0], len(test[1]))
    recovery = figures["recovery"]
    recovery["monitored"] = {
        "on": monitored,
        **{k: recovery.get(k) for k in ("teacher_accuracy", "accuracy_before", "accuracy")},
    }
    recovery.update(tested, evaluated_on=described)
    return {
        **figures,
        "accuracy": tested["accuracy"],
        "accuracy_before": tested["teacher_accuracy"],
        "accuracy_after_surgery": tested["accuracy_before"],
        "dataset": described,
    }


def _base_model(model: Any, folder: str) -> str:
    """The model the surgery started from, as recorded in the recipe: a Hub id, or a local model's
    name (folders never record paths), looked for in the current folder, beside ``folder`` and among
    the built-in models (recipes written before names were recorded hold a path, used as it is)."""
    import surgery
    from surgery.core.history import HUB_ID
    from surgery.demo.model import cache_dir
    from surgery.errors import SurgeryError

    source = next((step.base_model for step in surgery.history(model) if step.base_model), None)
    if source is None:
        raise SurgeryError(
            f"{folder} records no base model to distil from; pass --teacher (the original model's folder or Hub id)"
        )
    places = [Path(source), Path(folder).resolve().parent / source, cache_dir() / "models" / source]
    found = next((place for place in places if (place / "config.json").is_file()), None)
    if found is not None:
        return str(found)
    if HUB_ID.fullmatch(source):
        return source
    raise SurgeryError(
        f"{folder} was made from the local model '{source}' (model folders record a local model by its "
        f"name, not its path), which is not in the current folder, beside {folder} or among the built-in "
        "models; pass --teacher (the original model's folder)"
    )


def _recovery_options(args: argparse.Namespace) -> dict[str, str | None]:
    from surgery.recovery import RecoveryConfig

    return {name: getattr(args, name) for name, _, _ in RecoveryConfig.describe_options()}
