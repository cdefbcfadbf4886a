"""Shared benchmark helpers: environment report, side-by-side timing, FLOPs, markdown tables."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path

import torch

from surgery.evaluation import timing
from surgery.evaluation.flops import count_flops  # noqa: F401  (re-exported; counts CPU SDPA too)
from surgery.publish.export import cpu_description

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> str:
    """One markdown line per fact about the machine and libraries."""
    import transformers

    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if line.startswith("Model name")
        )
    except (StopIteration, OSError):
        cpu = platform.processor() or "unknown"
    facts = {
        "cpu": cpu,
        "cores (os.cpu_count)": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "torch CPU capability": torch.backends.cpu.get_cpu_capability(),
        "int8 instructions (VNNI, AMX)": cpu_description()["int8_flags"],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    return "\n".join(f"- {k}: {v}" for k, v in facts.items())


def vit_base(layer_norm_eps: float = 1e-12, image_size: int = 224):
    """A ViT-B/16 shape (random weights, seed 0), ``image_size`` px (224), 1000 classes, in eval mode."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=image_size,
        patch_size=16,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        num_labels=1000,
        layer_norm_eps=layer_norm_eps,
    )
    return ViTForImageClassification(config).eval()


def timing_arguments(
    repeats: int = 5, description: str | None = None, extra: Callable[[argparse.ArgumentParser], object] | None = None
) -> argparse.Namespace:
    """``--repeats`` and ``--threads`` (default 2, applied to torch) from the command line, and the
    arguments ``extra(parser)`` adds."""
    parser = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(parser)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def time_side_by_side(runs: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each callable; each repeat runs every callable once, in turn (shared noise):
    surgery.evaluation.timing's, one call per sample as these benchmarks have always timed."""
    return timing.time_side_by_side(runs, repeats=repeats, warmup=warmup, min_seconds=0.0)


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(name: str, title: str, body: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(f"# {title}\n\n{body}\n\n## Environment\n\n{environment()}\n")
    print(path.read_text())
    return path
