"""The commands of the ``surgery`` command line: each reads its arguments and calls the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from surgery.core.specs import configs_from_text as _specs


def _without_adapter(folder: str, command: str) -> str:
    """``folder``, unless it holds a LoRA adapter that ``command`` would silently leave out."""
    from surgery.checkpoint.adapter import ADAPTER

    if (Path(folder) / ADAPTER / "adapter_config.json").is_file():
        from surgery.errors import SurgeryError

        raise SurgeryError(
            f"{folder} holds a LoRA adapter (adapter/, from recover --lora ...,merge=false) that "
            f"`surgery {command}` would leave out; recover with merge=true to have it in the weights, or "
            f"use it from Python: surgery.load('{folder}') returns the model with its adapter"
        )
    return folder


def cmd_plan(args: argparse.Namespace) -> int:
    import surgery

    model = surgery.load(_without_adapter(args.model, "plan"))
    print(surgery.plan(model, _specs(args.plugin)))
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    import surgery
    from surgery.checkpoint.saving import save_from

    model = surgery.load(_without_adapter(args.model, "apply"))
    specs = _specs(args.plugin)
    print(surgery.plan(model, specs))
    surgery.apply(model, specs, calibration=_calibration(args.calibration, args.model))
    save_from(model, args.output, source=args.model)
    print(f"saved the rewritten model to {args.output}")
    return 0


def _calibration(source: str | None, model: str) -> Any:
    """Batches of pixel_values for steps that calibrate, through the model's own image processor: a
    built-in task's training split (the first 256 shapes; the 1149 digits), or the first 256 images
    of the train split of an imagefolder or Hub dataset (the same specs as --data)."""
    if source is None:
        return None
    from surgery.data.tasks import TASKS, task, task_tensors

    if source in TASKS:
        return task_tensors(model, "train", source, limit=task(source).calibration_images)[0].split(32)
    from surgery.data.imagesets import calibration_batches
    from surgery.data.processor import load_processor

    return calibration_batches(source, load_processor(model))


def cmd_inspect(args: argparse.Namespace) -> int:
    from transformers import AutoConfig

    from surgery.checkpoint.files import read_config_dict
    from surgery.checkpoint.recipe import read_steps

    read_config_dict(args.model)
    config = AutoConfig.from_pretrained(args.model, trust_remote_code=False)
    steps = read_steps(config)
    if args.json:
        print(json.dumps({"model_type": config.model_type, "steps": steps}, indent=2))
        return 0
    print(f"{args.model}: {config.model_type}, {len(steps)} surgery step(s)")
    for index, step in enumerate(steps, 1):
        options = " ".join(f"{k}={v}" for k, v in (step.get("options") or {}).items())
        print(f"{index}. {step['plugin']} {step.get('plugin_version', '?')} ({step.get('package', '?')})  {options}")
        print(f"   rewrites: {', '.join(step.get('targets') or []) or '(nothing)'}")
        versions = step.get("versions") or {}
        print("   saved with: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import surgery
    from surgery.publish.export import export

    model = surgery.load(_without_adapter(args.model, "export"))
    int8 = surgery.get_host().provider("int8")
    if args.int8 and not any(step.plugin == int8.name for step in surgery.history(model)):
        surgery.apply(model, int8.name, calibration=_calibration(args.calibration, args.model))
    result = export(
        model,
        args.output,
        to=args.to,
        source=args.model,
        overwrite=args.overwrite,
        exporter=args.exporter,
        batch=args.batch,
    )
    kind = "int8" if any(step.plugin == int8.name for step in surgery.history(model)) else "fp32"
    print(f"exported {kind} {args.to} to {result.path}; max |logit difference| vs PyTorch: {result.max_abs_diff:.2e}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import surgery
    from surgery.evaluation.measure import checkpoint_figures, record, runtime_figures

    if args.repeats < 1:
        from surgery.errors import SurgeryError

        raise SurgeryError(f"bench: --repeats got {args.repeats}; allowed: an integer >= 1.")
    figures = {
        **checkpoint_figures(args.model),
        **runtime_figures(surgery.load(_without_adapter(args.model, "bench")), repeats=args.repeats),
    }
    print(json.dumps(figures, indent=2))
    _record_where_local(args.model, figures, record)
    return 0


def _record_where_local(model: str, figures: dict[str, Any], record: Any) -> None:
    """Merge ``figures`` into a local model folder's results; a Hub id has no folder here to write to."""
    if Path(model).is_dir():
        print(f"recorded in {record(model, figures)}", file=sys.stderr)
    else:
        print(
            f"not recorded: {model} is a Hub id, not a local folder (download it to keep the results beside it)",
            file=sys.stderr,
        )


def cmd_eval(args: argparse.Namespace) -> int:
    from surgery.evaluation.measure import dataset_accuracy, record

    figures = dataset_accuracy(_without_adapter(args.model, "eval"), args.data, args.split)
    print(
        json.dumps(figures, indent=2) if args.json else f"accuracy {figures['accuracy']:.2%} on {figures['dataset']}"
    )
    _record_where_local(args.model, figures, record)
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    from surgery.publish.cards import card

    path = card(
        args.model,
        results=args.results,
        model_id=args.model_id,
        base_model=args.base_model,
        license=args.license,
        datasets=args.dataset,
        measure=not args.no_measure,
    )
    print(f"wrote {path}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from surgery.publish.hub import publishable_files, push

    args.model, args.repo_id = _folder_and_repo(args.model, args.repo_id)
    if Path(args.model).is_dir():
        skipped = publishable_files(args.model)[1]
        if skipped:
            shown = ", ".join(skipped[:8]) + (f" and {len(skipped) - 8} more" if len(skipped) > 8 else "")
            print(f"surgery: note: not uploading {shown} (not files of the model)", file=sys.stderr)
    if not (Path(args.model) / "README.md").exists():
        print(
            f"surgery: note: {args.model} has no README.md; run `surgery card {args.model}` first for a model card",
            file=sys.stderr,
        )
    url = push(args.model, args.repo_id, private=args.private, token=args.token, new=args.new)
    print(f"pushed {args.model} to {args.repo_id}: {url}")
    return 0


def _folder_and_repo(first: str, second: str) -> tuple[str, str]:
    """``(folder, repo id)`` from two arguments in either order: the one that is a folder here is the
    model (``hf upload`` puts the repository first); neither or both being folders is an error."""
    from surgery.errors import SurgeryError

    folders = [Path(first).is_dir(), Path(second).is_dir()]
    if folders == [True, False]:
        return first, second
    if folders == [False, True]:
        return second, first
    if not any(folders):
        raise SurgeryError(
            f"push: neither {first!r} nor {second!r} is a folder here; give the saved model's folder "
            "and the repository id (in either order)"
        )
    raise SurgeryError(
        f"push: both {first!r} and {second!r} are folders here, so which one is the repository id is "
        "ambiguous; run it from another folder or give the model folder's path with a ./ or /"
    )


def cmd_demo_model(args: argparse.Namespace) -> int:
    from surgery.demo.model import EVAL_FILE, default_model

    folder = default_model(args.arch, rebuild=args.rebuild, task_name=args.task)
    results = json.loads((folder / EVAL_FILE).read_text())
    print(f"{folder}  ({args.task} {args.arch}, test accuracy {results['accuracy']:.2%} on {results['split']})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from surgery.demo.run import run_demo

    return run_demo(
        arch=args.arch,
        output=Path(args.output),
        plugins=args.plugin,
        specs=_specs,
        recovery_epochs=args.recover_epochs,
        task_name=args.task,
    )
