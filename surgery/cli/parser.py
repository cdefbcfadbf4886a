"""The argument parser of the ``surgery`` command line."""

from __future__ import annotations

import argparse

from surgery.cli.commands import (
    cmd_apply,
    cmd_bench,
    cmd_card,
    cmd_demo,
    cmd_demo_model,
    cmd_eval,
    cmd_export,
    cmd_inspect,
    cmd_plan,
    cmd_push,
)
from surgery.cli.catalog_commands import cmd_families, cmd_list
from surgery.cli.env_command import add_parser as add_env
from surgery.cli.env_command import version_line
from surgery.cli.recover_command import add_parser as add_recover
from surgery.data.tasks import TASKS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="surgery", description="Model surgery for Hugging Face vision transformers.")
    parser.add_argument("--traceback", action="store_true", help="show the Python traceback on errors")
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list installed surgery plugins")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_list)

    p = sub.add_parser("families", help="which plugin works on which model family, and why not (markdown table)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_families)

    plugin_help = "a plugin and its options, NAME[:key=value,...]; repeat for several steps"
    p = sub.add_parser("plan", help="show what apply would change (nothing is written)")
    p.add_argument("model", help="a local model folder or a Hub id")
    p.add_argument("--plugin", "-p", action="append", required=True, help=plugin_help)
    p.set_defaults(run=cmd_plan)

    p = sub.add_parser("apply", help="rewrite a model and save it with its recipe")
    p.add_argument("model", help="a local model folder or a Hub id")
    p.add_argument("--plugin", "-p", action="append", required=True, help=plugin_help)
    p.add_argument("--output", "-o", required=True, help="folder to save the rewritten model to")
    p.add_argument(
        "--calibration",
        metavar="DATA",
        help="data for steps that calibrate (quantize), as --data takes it: "
        "'digits' or 'shapes' (built in), a local imagefolder or a Hub dataset id (its train split)",
    )
    p.set_defaults(run=cmd_apply)

    p = sub.add_parser("inspect", help="print the surgery recipe of a saved model")
    p.add_argument("model", help="a local model folder or a Hub id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_inspect)

    p = sub.add_parser("export", help="export a saved model with Optimum to ONNX or OpenVINO, checked against PyTorch")
    p.add_argument("model", help="a saved model folder or a Hub id")
    p.add_argument("--to", required=True, choices=["onnx", "openvino"])
    p.add_argument("--int8", action="store_true", help="add an int8 `quantize` step first (needs --calibration)")
    p.add_argument(
        "--calibration",
        metavar="DATA",
        help="calibration data for --int8, as --data takes it: 'digits' or "
        "'shapes' (built in), a local imagefolder or a Hub dataset id (its train split)",
    )
    p.add_argument("--output", "-o", required=True, help="folder for the exported model (not the model's own folder)")
    p.add_argument("--overwrite", action="store_true", help="export into a folder that holds other files")
    p.add_argument(
        "--exporter",
        choices=["auto", "optimum", "torch"],
        default="auto",
        help="what writes the ONNX graph: Optimum (transformers 4.57), torch.onnx, or auto (Optimum where installed)",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=3,
        help="images in the check against PyTorch (default 3); also the fixed "
        "batch of an OpenVINO graph a method needs static shapes for (bivit's W1A1 as BinaryConvolution)",
    )
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("bench", help="parameters, checkpoint size, FLOPs and latency of a saved model (JSON)")
    p.add_argument("model", help="a saved model folder")
    p.add_argument("--repeats", type=int, default=10, help="timed runs after one warm-up (median reported)")
    p.set_defaults(run=cmd_bench)

    data_help = "'digits' (built in), a local imagefolder (<dir>/<split>/<class>/<image>) or a Hub dataset id"
    p = sub.add_parser("eval", help="accuracy of a saved model (recorded for the card; --json prints it as JSON)")
    p.add_argument("model", help="a saved model folder with its image processor")
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--split", default="test", help="the split to evaluate on (default: test)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON on stdout (and nothing else there)")
    p.set_defaults(run=cmd_eval)

    add_recover(sub, data_help)

    p = sub.add_parser("card", help="write README.md (model card) for a saved rewritten model")
    p.add_argument("model", help="a saved model folder")
    p.add_argument("--results", help="JSON file of figures: accuracy, accuracy_before, latency_ms_before, dataset ...")
    p.add_argument("--model-id", help="the repository id the card refers to (default: the folder name)")
    p.add_argument("--base-model", help="the Hub id of the model before surgery")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--dataset", action="append", help="Hub dataset id(s) for the metadata")
    p.add_argument("--no-measure", action="store_true", help="do not load the model to measure FLOPs and latency")
    p.set_defaults(run=cmd_card)

    p = sub.add_parser(
        "push",
        help="upload a model folder to the Hugging Face Hub",
        description="The folder and the repository id go in either order: `surgery push FOLDER REPO_ID` "
        "or, as `hf upload` has them, `surgery push REPO_ID FOLDER`.",
    )
    p.add_argument(
        "model", metavar="FOLDER", help="a saved model folder (or the repository id, with the folder second)"
    )
    p.add_argument("repo_id", metavar="REPO_ID", help="namespace/name on the Hub (or the folder, with the id first)")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--token", help="a Hugging Face token with write access (default: HF_TOKEN or the stored login)")
    p.add_argument("--new", action="store_true", help="fail if the repository already exists")
    p.set_defaults(run=cmd_push)

    from surgery.cli.search_command import add_parser as add_search

    add_search(sub)
    add_env(sub)

    from surgery.demo.zoo import ARCHITECTURES

    task_help = (
        "the built-in task: digits (default; 8x8 digits) or shapes (the proving ground: count plus signs at 64 px)"
    )
    p = sub.add_parser("demo-model", help="build (once) and show a built-in model (digits by default)")
    p.add_argument("--arch", default="vit", choices=ARCHITECTURES)
    p.add_argument("--task", default="digits", choices=list(TASKS), help=task_help)
    p.add_argument("--rebuild", action="store_true", help="train it again even if it is cached")
    p.set_defaults(run=cmd_demo_model)

    p = sub.add_parser("demo", help="the main job end to end on a built-in model (digits by default)")
    p.add_argument("--arch", default="vit", choices=ARCHITECTURES)
    p.add_argument("--task", default="digits", choices=list(TASKS), help=task_help)
    p.add_argument("--plugin", "-p", action="append", help=plugin_help + " (default: ggem)")
    p.add_argument("--output", "-o", default="out/demo", help="folder for the rewritten model (default: out/demo)")
    p.add_argument("--recover-epochs", type=int, help="epochs of recovery after the warm-up stage (default: 15)")
    p.set_defaults(run=cmd_demo)
    return parser
