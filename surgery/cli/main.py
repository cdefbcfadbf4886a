"""The ``surgery`` command line: list, plan, apply, inspect, demo-model and demo.

Bad input prints one ``surgery: error: ...`` message and exits with status 2, Ctrl-C one
``surgery: interrupted`` line with status 130; ``--traceback`` shows the Python traceback instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

from surgery.cli.parser import build_parser
from surgery.core.specs import parse_plugin_spec

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130  # as a shell reports a process stopped by Ctrl-C (128 + SIGINT)

__all__ = ["build_parser", "main", "parse_plugin_spec"]


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
        for option in ("output", "checkpoint_dir"):  # folders a command writes: refused before any work
            target = getattr(args, option, None)
            if target is not None and Path(target).exists() and not Path(target).is_dir():
                from surgery.errors import SurgeryError

                flag = "--" + option.replace("_", "-")
                raise SurgeryError(f"cannot save to {target} ({flag}): it is a file, not a folder.")
        return args.run(args)
    except KeyboardInterrupt:
        if args.traceback:
            raise
        print(f"surgery: interrupted ({args.command})", file=sys.stderr)
        return EXIT_INTERRUPTED
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
