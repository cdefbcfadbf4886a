"""The figures a model card shows: read and checked (finite numbers, accuracies in [0, 1]), as the before/after
table, as the Hub's evaluation results, and as a plot of accuracy against latency beside the card."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult

from surgery.errors import SurgeryError, clean_text
from surgery.evaluation.measure import RESULTS_FILE

PLOT_FILE = "surgery_figures.png"
FIGURES = [  # key, label, format
    ("accuracy", "accuracy", lambda v: f"{v:.2%}"),
    ("parameters", "parameters", lambda v: f"{v / 1e6:.3f} M"),
    ("checkpoint_mb", "checkpoint size", lambda v: f"{v:.2f} MB"),
    ("gflops", "GFLOPs per image", lambda v: f"{v:.3f}"),
    ("latency_ms", "latency per image", lambda v: f"{v:.2f} ms"),
]


def read_results(folder: Path, results: dict[str, Any] | str | Path | None) -> dict[str, Any]:
    """The figures a card shows: ``results`` (a dict or a JSON file, checked), else the folder's own results file."""
    if results is None:
        default = folder / RESULTS_FILE
        return json.loads(default.read_text()) if default.exists() else {}
    if isinstance(results, (str, Path)):
        try:
            results = json.loads(Path(results).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SurgeryError(f"cannot read results from {results}: {error}") from error
    return check_figures(results)


NUMERIC = (
    "accuracy",
    "accuracy_before",
    "accuracy_after_surgery",
    "latency_ms",
    "latency_ms_before",
    "gflops",
    "gflops_before",
    "parameters",
    "parameters_before",
    "checkpoint_mb",
    "checkpoint_mb_before",
)


def check_figures(figures: Any) -> dict[str, Any]:
    """Results must be a JSON object whose figures are finite numbers (accuracies in [0, 1])."""
    if not isinstance(figures, dict):
        raise SurgeryError(f"card: results must be a JSON object of figures, got {type(figures).__name__}.")
    for key in NUMERIC:
        value = figures.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SurgeryError(f"card: results field '{key}' must be a finite number, got {clean_text(repr(value))}.")
        if key.startswith("accuracy") and not 0 <= value <= 1:
            raise SurgeryError(f"card: results field '{key}' is a fraction in [0, 1], got {value}.")
    return dict(figures)


def figure_rows(figures: dict[str, Any]) -> list[dict[str, str]]:
    """The card's before/after table: one row per figure known before or after."""
    rows = []
    for key, label, fmt in FIGURES:
        if key in figures or f"{key}_before" in figures:
            show = lambda k: fmt(figures[k]) if isinstance(figures.get(k), (int, float)) else "-"  # noqa: E731
            rows.append({"label": label, "before": show(f"{key}_before"), "after": show(key)})
    return rows


def eval_results(figures: dict[str, Any], dataset: str | None) -> list[EvalResult]:
    """The accuracy as the Hub's model-index entry (``EvalResult``), on ``dataset``."""
    if "accuracy" not in figures:
        return []
    name = dataset or "evaluation set"
    return [
        EvalResult(
            task_type="image-classification",
            dataset_type=name if is_hub_dataset(name) else "custom",
            dataset_name=name,
            metric_type="accuracy",
            metric_value=round(float(figures["accuracy"]), 4),
        )
    ]


def plot_figures(folder: Path, figures: dict[str, Any]) -> bool:
    """Accuracy against latency, before and after, when both are known (PNG beside the card)."""
    points = [
        (suffix, figures.get(f"latency_ms{suffix}"), figures.get(f"accuracy{suffix}")) for suffix in ("_before", "")
    ]
    pairs: list[tuple[str, float, float]] = [
        (label, x, y) for label, x, y in points if isinstance(x, (int, float)) and isinstance(y, (int, float))
    ]
    if not pairs:
        (folder / PLOT_FILE).unlink(missing_ok=True)
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=120)
    for label, x, y in pairs:
        name = "before surgery" if label else "this model"
        ax.scatter([x], [y * 100], s=60, label=name)
        ax.annotate(name, (x, y * 100), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("latency per image (ms)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.margins(0.3)
    fig.tight_layout()
    fig.savefig(folder / PLOT_FILE)
    plt.close(fig)
    return True


def is_hub_dataset(name: str) -> bool:
    """Whether ``name`` reads as a Hub dataset id (``name`` or ``owner/name``), not a description."""
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name)) and " " not in name
