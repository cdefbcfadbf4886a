"""``surgery search``: the recipe search on the command line (:func:`surgery.search`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "search",
        help="find the recipe that meets a latency/size/FLOPs budget on a runtime, measured",
        description="Measures candidate recipes from the installed methods in the target runtime, beside "
        "the original, and saves the most accurate one within the budget (with search.json, "
        "search.md and a plot). Run it again on the same --output to resume.",
    )
    p.add_argument("model", help="a saved model folder (with its image processor)")
    p.add_argument(
        "--data",
        default="digits",
        help="'digits' or 'shapes' (built in), a local imagefolder or a Hub dataset "
        "id; accuracy is measured on its validation split, the pick's once more on test",
    )
    p.add_argument("--runtime", choices=["torch", "onnx", "openvino"], default="torch")
    p.add_argument("--latency", type=float, help="latency budget as a ratio to the original (0.5 = twice as fast)")
    p.add_argument("--size", type=float, help="size budget as a ratio to the original")
    p.add_argument("--flops", type=float, help="FLOPs budget as a ratio to the original")
    p.add_argument("--max-drop", type=float, default=1.0, help="accuracy points the pick may lose (default 1.0)")
    p.add_argument(
        "--objective",
        choices=["latency", "size", "flops"],
        default="latency",
        help="the cost the front trades against accuracy (default latency)",
    )
    p.add_argument("--batch-size", type=int, default=1, help="the batch size latency is measured at (default 1)")
    p.add_argument("--image-size", type=int, help="must be the model's image size (exports fix it)")
    p.add_argument("--trials", type=int, default=40, help="candidates to propose (default 40)")
    p.add_argument("--time-budget", type=float, metavar="MIN", help="stop proposing after this many minutes")
    p.add_argument(
        "--recover-epochs",
        type=int,
        default=0,
        help="epochs of distillation for methods that need recovery, when they can reach the front (default 0: off)",
    )
    p.add_argument("--lora", metavar="K=V,...", help="recover with LoRA adapters (PEFT): r=8,alpha=16,...")
    p.add_argument("--max-steps", type=int, default=2, help="methods combined at most in one recipe (default 2)")
    p.add_argument("--include", action="append", metavar="METHOD", help="search only these methods (repeat)")
    p.add_argument("--exclude", action="append", default=[], metavar="METHOD", help="leave these methods out (repeat)")
    p.add_argument(
        "--min-speedup",
        type=float,
        default=1.05,
        metavar="X",
        help="where latency matters, leave out a method whose fastest declared point is below X times the "
        "original's speed on the runtime (default 1.05; 0: search every method)",
    )
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per candidate, after warm-up (default 7)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of the table")
    p.add_argument("--output", "-o", required=True, help="folder for the pick, search.json, search.md and the cache")
    p.set_defaults(run=cmd_search)


def cmd_search(args: argparse.Namespace) -> int:
    from surgery.recipe_search import search

    result = search(
        args.model,
        args.data,
        runtime=args.runtime,
        latency=args.latency,
        size=args.size,
        flops=args.flops,
        max_drop=args.max_drop,
        objective=args.objective,
        batch_size=args.batch_size,
        image_size=args.image_size,
        trials=args.trials,
        time_budget=args.time_budget,
        recover_epochs=args.recover_epochs,
        lora=args.lora,
        max_steps=args.max_steps,
        include=args.include,
        exclude=args.exclude,
        seed=args.seed,
        output=args.output,
        repeats=args.repeats,
        min_speedup=args.min_speedup,
        log=(lambda text: None) if args.json else print,
    )
    if args.json:
        summary = dict(
            result.summary, candidates=[{k: v for k, v in c.items() if k != "correct"} for c in result.candidates]
        )
        print(json.dumps(summary, indent=1, default=str))
    else:
        print((Path(args.output) / "search.md").read_text())
    return 0 if result.chosen is not None else 1
