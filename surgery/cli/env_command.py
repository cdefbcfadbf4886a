"""``surgery env`` and ``surgery --version``: what a bug report needs, as ``transformers env`` gives it.

The versions come from the installed distributions' metadata (nothing optional is imported to read
them), the CPU from ``/proc/cpuinfo`` with the flags that decide the int8 kernels, and the plugins
from the host, each with the distribution that provides it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from importlib import metadata

# the stack surgery runs in and beside: runtimes, exporters and the libraries recovery and the Hub use
DISTRIBUTIONS = (
    "torch",
    "transformers",
    "huggingface_hub",
    "safetensors",
    "accelerate",
    "peft",
    "datasets",
    "evaluate",
    "optimum",
    "optimum-onnx",
    "optimum-intel",
    "onnx",
    "onnxruntime",
    "openvino",
    "nncf",
    "optuna",
    "pluggy",
)


def version_of(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def version_line() -> str:
    """``surgery 0.1.0 (transformers 4.57.6, torch 2.13.0+cpu, Python 3.11.7)``."""
    from surgery._version import __version__

    return (
        f"surgery {__version__} (transformers {version_of('transformers') or 'not installed'}, "
        f"torch {version_of('torch') or 'not installed'}, Python {platform.python_version()})"
    )


def environment() -> dict:
    import torch

    from surgery import get_host
    from surgery._version import __version__
    from surgery.publish.export import cpu_description

    host = get_host()
    return {
        "surgery": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": {**cpu_description(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "versions": {name: version_of(name) for name in DISTRIBUTIONS},
        "plugins": {m.name: f"{m.package} {m.version}" for m in host.methods.values()},
        "plugin_problems": list(host.problems),
    }


def cmd_env(args: argparse.Namespace) -> int:
    env = environment()
    if args.json:
        print(json.dumps(env, indent=2))
        return 0
    cpu = env["cpu"]
    lines = [
        f"- surgery version: {env['surgery']}",
        f"- Platform: {env['platform']}",
        f"- Python version: {env['python']}",
        f"- CPU: {cpu['model']} ({cpu['cores']} cores, {cpu['torch_threads']} torch threads; torch kernels: {cpu['torch_capability']}; "
        f"int8 instructions: {cpu['int8_flags']})",
    ]
    lines += [f"- {name}: {version or 'not installed'}" for name, version in env["versions"].items()]
    lines.append("- plugins: " + ", ".join(f"{name} ({where})" for name, where in env["plugins"].items()))
    lines += [f"- plugin problem: {problem}" for problem in env["plugin_problems"]]
    print("Copy-and-paste the text below in your bug report.\n\n" + "\n".join(lines))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("env", help="print the environment for a bug report (versions, CPU, plugins)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_env)
