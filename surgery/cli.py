"""The ``surgery`` command line: list, plan, apply, inspect, demo-model and demo.

Bad input prints one ``surgery: error: ...`` message and exits with status 2; ``--traceback``
shows the Python traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1


def parse_plugin_spec(text: str) -> tuple[str, dict[str, str]]:
    """``NAME[:k=v,...]`` to ``(name, {k: v})``; commas inside brackets belong to the value."""
    from surgery.errors import ConfigError

    name, _, rest = text.partition(":")
    options: dict[str, str] = {}
    for item in _split_top_level(rest):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--plugin {text!r}: write options as NAME:key=value,key=value (got {item!r}).")
        if key.strip() in options:
            raise ConfigError(f"--plugin {text!r}: option '{key.strip()}' is given twice; give each option once.")
        options[key.strip()] = value.strip()
    if not name.strip():
        raise ConfigError(f"--plugin {text!r}: the plugin name is missing.")
    return name.strip(), options


def _split_top_level(text: str) -> list[str]:
    items, depth, current = [], 0, ""
    for char in text:
        depth += char in "[({"
        depth -= char in "])}"
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        items.append(current)
    return [item for item in items if item.strip()]


def _specs(texts: list[str]) -> list[Any]:
    import surgery

    specs = []
    for text in texts:
        name, options = parse_plugin_spec(text)
        method = surgery.get_host().method(name)
        specs.append(method.config_class.from_strings(options))
    return specs


# -- commands ---------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    import surgery

    host = surgery.get_host()
    methods = surgery.list_methods()
    if args.json:
        print(json.dumps([_method_json(m) for m in methods], indent=2))
    else:
        rows = [("name", "summary", "architectures", "package")]
        rows += [(m.name, m.summary, ", ".join(m.model_types), f"{m.package} {m.version}") for m in methods]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for row in rows:
            print("  ".join(cell.ljust(widths[i]) if i < 3 else cell for i, cell in enumerate(row)))
    for problem in host.problems:
        print(f"surgery: warning: {problem}", file=sys.stderr)
    return 0


def _method_json(method: Any) -> dict[str, Any]:
    return {
        "name": method.name,
        "summary": method.summary,
        "model_types": list(method.model_types),
        "package": method.package,
        "version": method.version,
        "reversible": method.reversible,
        "paper": method.paper,
        "options": [{"name": n, "type": t, "default": d} for n, t, d in method.config_class.describe_options()],
    }


def cmd_plan(args: argparse.Namespace) -> int:
    import surgery

    model = surgery.load(args.model)
    print(surgery.plan(model, _specs(args.plugin)))
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    import surgery

    model = surgery.load(args.model)
    specs = _specs(args.plugin)
    print(surgery.plan(model, specs))
    surgery.apply(model, specs, calibration=_calibration(args.calibration, args.model))
    save_model(model, args.output, source=args.model)
    print(f"saved the rewritten model to {args.output}")
    return 0


def _calibration(name: str | None, model: str) -> Any:
    """Batches of pixel_values for steps that calibrate: the built-in digits training split, through
    the model's own image processor."""
    if name is None:
        return None
    from surgery.data import digits_for

    return digits_for(model, "train")[0].split(32)


def save_model(model: Any, output: str | Path, source: str | Path | None = None) -> None:
    """Save weights + recipe, and the source's image processor when it has one, in one atomic step."""
    from transformers import AutoImageProcessor

    from surgery.saving import save

    processor = None
    if source is not None:
        try:
            processor = AutoImageProcessor.from_pretrained(source, use_fast=False)
        except (OSError, ValueError):
            print(f"surgery: note: {source} has no image processor; none was saved", file=sys.stderr)
    save(model, output, processor=processor)


def cmd_inspect(args: argparse.Namespace) -> int:
    from transformers import AutoConfig

    from surgery.recipe import read_steps

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
    from surgery.exporting import export

    model = surgery.load(args.model)
    if args.int8 and not any(step.plugin == "quantize" for step in surgery.history(model)):
        surgery.apply(model, "quantize", calibration=_calibration(args.calibration, args.model))
    result = export(model, args.output, to=args.to, source=args.model, overwrite=args.overwrite)
    kind = "int8" if result.quantized else "fp32"
    print(f"exported {kind} {args.to} to {result.path}; max |logit difference| vs PyTorch: {result.max_abs_diff:.2e}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import surgery
    from surgery.measure import checkpoint_figures, record, runtime_figures

    if args.repeats < 1:
        from surgery.errors import SurgeryError

        raise SurgeryError(f"bench: --repeats got {args.repeats}; allowed: an integer >= 1.")
    figures = {**checkpoint_figures(args.model), **runtime_figures(surgery.load(args.model), repeats=args.repeats)}
    path = record(args.model, figures)
    print(json.dumps(figures, indent=2))
    print(f"recorded in {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from surgery.measure import dataset_accuracy, record

    figures = dataset_accuracy(args.model, args.data, args.split)
    path = record(args.model, figures)
    print(f"accuracy {figures['accuracy']:.2%} on {figures['dataset']}; recorded in {path}")
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from accelerate import PartialState
    from transformers import AutoImageProcessor

    import surgery
    from surgery.imagesets import load_images
    from surgery.measure import describe_data, record
    from surgery.recover import RecoveryConfig, recover

    config = RecoveryConfig.from_strings({k: v for k, v in _recovery_options(args).items() if v is not None})
    model = surgery.load(args.model)
    teacher_source = args.teacher or _base_model(model, args.model)
    teacher = surgery.load(teacher_source)
    processor = AutoImageProcessor.from_pretrained(args.model, use_fast=False)
    train = load_images(args.data, args.train_split)
    evaluation = load_images(args.data, args.eval_split) if args.eval_split != "none" else None
    checkpoints = Path(args.checkpoint_dir or Path(args.output) / "checkpoints")
    result = recover(model, teacher, train, evaluation, config, processor=processor, checkpoint_dir=checkpoints,
                     resume=args.resume)
    if not PartialState().is_main_process:
        return 0
    save_model(model, args.output, source=args.model)
    (Path(args.output) / "recovery_log.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    if result.accuracy is not None:
        dataset = describe_data(args.data, args.eval_split, len(evaluation))
        record(args.output, result.figures(str(teacher_source), args.data, dataset))
    figures = ", ".join(f"{label} {value:.2%}" for label, value in (
        ("teacher", result.teacher_accuracy), ("after surgery", result.accuracy_before), ("recovered", result.accuracy))
        if value is not None)
    print(f"recovered {args.model} in {result.seconds:.0f} s ({figures}); saved to {args.output}")
    return 0


def _base_model(model: Any, folder: str) -> str:
    """The model the surgery started from, as recorded in the recipe."""
    import surgery

    source = next((step.base_model for step in surgery.history(model) if step.base_model), None)
    if source is None:
        from surgery.errors import SurgeryError

        raise SurgeryError(f"{folder} records no base model to distil from; pass --teacher (the original model's folder or Hub id)")
    return source


def _recovery_options(args: argparse.Namespace) -> dict[str, str | None]:
    from surgery.recover import RecoveryConfig

    return {name: getattr(args, name) for name, _, _ in RecoveryConfig.describe_options()}


def cmd_card(args: argparse.Namespace) -> int:
    from surgery.cards import card

    path = card(args.model, results=args.results, model_id=args.model_id, base_model=args.base_model,
                license=args.license, datasets=args.dataset, measure=not args.no_measure)
    print(f"wrote {path}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from surgery.hub import publishable_files, push

    if Path(args.model).is_dir():
        skipped = publishable_files(args.model)[1]
        if skipped:
            shown = ", ".join(skipped[:8]) + (f" and {len(skipped) - 8} more" if len(skipped) > 8 else "")
            print(f"surgery: note: not uploading {shown} (not files of the model)", file=sys.stderr)
    if not (Path(args.model) / "README.md").exists():
        print(f"surgery: note: {args.model} has no README.md; run `surgery card {args.model}` first for a model card", file=sys.stderr)
    url = push(args.model, args.repo_id, private=args.private, token=args.token, new=args.new)
    print(f"pushed {args.model} to {args.repo_id}: {url}")
    return 0


def cmd_demo_model(args: argparse.Namespace) -> int:
    from surgery.demo_model import EVAL_FILE, default_model

    folder = default_model(args.arch, rebuild=args.rebuild)
    results = json.loads((folder / EVAL_FILE).read_text())
    print(f"{folder}  ({args.arch}, test accuracy {results['accuracy']:.2%} on {results['split']})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from surgery.demo import run_demo

    return run_demo(arch=args.arch, output=Path(args.output), plugins=args.plugin or ["ggem"], specs=_specs,
                    recovery_epochs=args.recover_epochs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="surgery", description="Model surgery for Hugging Face vision transformers.")
    parser.add_argument("--traceback", action="store_true", help="show the Python traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list installed surgery plugins")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_list)

    plugin_help = "a plugin and its options, NAME[:key=value,...]; repeat for several steps"
    p = sub.add_parser("plan", help="show what apply would change (nothing is written)")
    p.add_argument("model", help="a local model folder or a Hub id")
    p.add_argument("--plugin", "-p", action="append", required=True, help=plugin_help)
    p.set_defaults(run=cmd_plan)

    p = sub.add_parser("apply", help="rewrite a model and save it with its recipe")
    p.add_argument("model", help="a local model folder or a Hub id")
    p.add_argument("--plugin", "-p", action="append", required=True, help=plugin_help)
    p.add_argument("--output", "-o", required=True, help="folder to save the rewritten model to")
    p.add_argument("--calibration", choices=["digits"], help="data for steps that calibrate (quantize): the built-in digits")
    p.set_defaults(run=cmd_apply)

    p = sub.add_parser("inspect", help="print the surgery recipe of a saved model")
    p.add_argument("model", help="a local model folder or a Hub id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_inspect)

    p = sub.add_parser("export", help="export a saved model with Optimum to ONNX or OpenVINO, checked against PyTorch")
    p.add_argument("model", help="a saved model folder or a Hub id")
    p.add_argument("--to", required=True, choices=["onnx", "openvino"])
    p.add_argument("--int8", action="store_true", help="add an int8 `quantize` step first (needs --calibration)")
    p.add_argument("--calibration", choices=["digits"], help="calibration data for --int8: the built-in digits")
    p.add_argument("--output", "-o", required=True, help="folder for the exported model (not the model's own folder)")
    p.add_argument("--overwrite", action="store_true", help="export into a folder that holds other files")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("bench", help="parameters, checkpoint size, FLOPs and latency of a saved model (JSON)")
    p.add_argument("model", help="a saved model folder")
    p.add_argument("--repeats", type=int, default=10, help="timed runs after one warm-up (median reported)")
    p.set_defaults(run=cmd_bench)

    data_help = "'digits' (built in), a local imagefolder (<dir>/<split>/<class>/<image>) or a Hub dataset id"
    p = sub.add_parser("eval", help="accuracy of a saved model (JSON)")
    p.add_argument("model", help="a saved model folder with its image processor")
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--split", default="test", help="the split to evaluate on (default: test)")
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser("recover", help="fine-tune a rewritten model with distillation from its original (accelerate)",
                       description="Runs on one CPU or GPU as is, and on several with `accelerate launch -m surgery.cli recover ...`.")
    p.add_argument("model", help="a saved rewritten model folder")
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--output", "-o", required=True, help="folder for the recovered model")
    p.add_argument("--teacher", help="the original model (default: the base model recorded in the recipe)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--eval-split", default="test", help="evaluated before and after every epoch; 'none' to skip")
    p.add_argument("--checkpoint-dir", help="epoch checkpoints (default: OUTPUT/checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --checkpoint-dir")
    from surgery.recover import RecoveryConfig

    for name, kind, default in RecoveryConfig.describe_options():
        metavar = "{" + ",".join(x.strip("' ") for x in kind.split("|")) + "}" if "|" in kind else kind.upper()
        p.add_argument("--" + name.replace("_", "-"), dest=name, metavar=metavar,
                       help=f"{kind}, default {default}")
    p.set_defaults(run=cmd_recover)

    p = sub.add_parser("card", help="write README.md (model card) for a saved rewritten model")
    p.add_argument("model", help="a saved model folder")
    p.add_argument("--results", help="JSON file of figures: accuracy, accuracy_before, latency_ms_before, dataset ...")
    p.add_argument("--model-id", help="the repository id the card refers to (default: the folder name)")
    p.add_argument("--base-model", help="the Hub id of the model before surgery")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--dataset", action="append", help="Hub dataset id(s) for the metadata")
    p.add_argument("--no-measure", action="store_true", help="do not load the model to measure FLOPs and latency")
    p.set_defaults(run=cmd_card)

    p = sub.add_parser("push", help="upload a model folder to the Hugging Face Hub")
    p.add_argument("model", help="a saved model folder")
    p.add_argument("repo_id", help="namespace/name on the Hub")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--token", help="a Hugging Face token with write access (default: HF_TOKEN or the stored login)")
    p.add_argument("--new", action="store_true", help="fail if the repository already exists")
    p.set_defaults(run=cmd_push)

    from surgery.zoo import ARCHITECTURES

    p = sub.add_parser("demo-model", help="build (once) and show the built-in digits model")
    p.add_argument("--arch", default="vit", choices=ARCHITECTURES)
    p.add_argument("--rebuild", action="store_true", help="train it again even if it is cached")
    p.set_defaults(run=cmd_demo_model)

    p = sub.add_parser("demo", help="the main job end to end on the built-in digits model")
    p.add_argument("--arch", default="vit", choices=ARCHITECTURES)
    p.add_argument("--plugin", "-p", action="append", help=plugin_help + " (default: ggem)")
    p.add_argument("--output", "-o", default="out/demo", help="folder for the rewritten model (default: out/demo)")
    p.add_argument("--recover-epochs", type=int, help="epochs of recovery after the warm-up stage (default: 15)")
    p.set_defaults(run=cmd_demo)
    return parser


def check_model_argument(model: str) -> None:
    """A local path must be a saved model folder; anything else must look like a Hub id."""
    from surgery.errors import SurgeryError

    path = Path(model)
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise SurgeryError(f"{model} is not a saved model folder (no config.json).")
    elif model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model:
        raise SurgeryError(f"{model}: no such model folder (and not a Hub id, namespace/name).")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "model", None) is not None and args.command not in ("card", "push"):
            check_model_argument(args.model)
        output = getattr(args, "output", None)
        if output is not None and Path(output).exists() and not Path(output).is_dir():
            from surgery.errors import SurgeryError

            raise SurgeryError(f"cannot save to {output}: it is a file, not a folder.")
        return args.run(args)
    except Exception as error:  # one clear line unless --traceback
        if args.traceback:
            raise
        from surgery.errors import SurgeryError

        bad_input = isinstance(error, (SurgeryError, OSError, FileNotFoundError))
        text = str(error).strip() or type(error).__name__
        kind = "error" if bad_input else f"unexpected {type(error).__name__}"
        print(f"surgery: {kind}: {text}", file=sys.stderr)
        if not bad_input:
            print("surgery: run again with --traceback for details", file=sys.stderr)
        return EXIT_BAD_INPUT if bad_input else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
