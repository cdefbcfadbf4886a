"""Budgets, the front, the pick, and what a search writes: ``search.json``, ``search.md``, a plot.

The front holds the measured candidates (status ``ok``) that no other one beats on both the
objective (a cost ratio to the original: latency, size or FLOPs) and accuracy. The pick: with a
budget on the objective, the most accurate candidate within every budget and ``max_drop`` (ties: the
cheaper); without one, the cheapest within them (ties: the more accurate).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from surgery.errors import ConfigError, did_you_mean

OBJECTIVES = {"latency": "latency_ratio", "size": "size_ratio", "flops": "flops_ratio"}


@dataclasses.dataclass(frozen=True)
class Budget:
    """Ratios to the original (None: unbounded) and the accuracy points the user accepts to lose."""

    objective: str = "latency"
    latency: float | None = None
    size: float | None = None
    flops: float | None = None
    max_drop: float = 1.0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(
                f"search: 'objective' got {self.objective!r}; allowed: {', '.join(OBJECTIVES)}."
                + did_you_mean(self.objective, OBJECTIVES)
            )
        for name in OBJECTIVES:
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise ConfigError(
                    f"search: '{name}' got {value!r}; allowed: a ratio to the original in (0, 1] "
                    f"(0.5 = half the original's {name})"
                )
        if not 0.0 <= self.max_drop <= 100.0:
            raise ConfigError(f"search: 'max_drop' got {self.max_drop!r}; allowed: accuracy points in [0, 100]")

    def limits(self) -> dict[str, float]:
        return {OBJECTIVES[n]: getattr(self, n) for n in OBJECTIVES if getattr(self, n) is not None}

    def violations(self, record: dict[str, Any], original_accuracy: float) -> dict[str, float]:
        """How far ``record`` is over each budget (<= 0 everywhere: within), Optuna's constraints."""
        over = {key: record[key] - limit for key, limit in self.limits().items()}
        return {**over, "accuracy_drop": (original_accuracy - record["accuracy"]) * 100 - self.max_drop}

    def feasible(self, record: dict[str, Any], original_accuracy: float) -> bool:
        return record.get("status") == "ok" and all(
            v <= 1e-12 for v in self.violations(record, original_accuracy).values()
        )

    def describe(self) -> str:
        bounds = [
            f"{name} <= {value:g}x" for name, value in ((n, getattr(self, n)) for n in OBJECTIVES) if value is not None
        ]
        return ", ".join(bounds + [f"at most {self.max_drop:g} accuracy points lost"])


def front(records: list[dict[str, Any]], objective: str) -> list[dict[str, Any]]:
    """The measured candidates no other beats on both cost and accuracy, cheapest first."""
    key = OBJECTIVES[objective]
    measured = sorted((r for r in records if r.get("status") == "ok"), key=lambda r: (r[key], -r["accuracy"]))
    kept, best = [], -1.0
    for record in measured:
        if record["accuracy"] > best:
            kept.append(record)
            best = record["accuracy"]
    return kept


def pick(records: list[dict[str, Any]], budget: Budget, original_accuracy: float) -> dict[str, Any] | None:
    key = OBJECTIVES[budget.objective]
    feasible = [r for r in records if budget.feasible(r, original_accuracy)]
    if not feasible:
        return None
    if getattr(budget, budget.objective) is not None:
        return max(feasible, key=lambda r: (r["accuracy"], -r[key]))
    return min(feasible, key=lambda r: (r[key], -r["accuracy"]))


def closest(records: list[dict[str, Any]], budget: Budget, original_accuracy: float) -> dict[str, Any] | None:
    """When nothing fits: among the measured candidates within ``max_drop``, the one least over the
    cost budgets (the sum of the ratios' excess); when none is within ``max_drop``, the most accurate."""
    measured = [r for r in records if r.get("status") == "ok"]
    accurate = [r for r in measured if budget.violations(r, original_accuracy)["accuracy_drop"] <= 1e-12]
    if accurate:
        return min(
            accurate,
            key=lambda r: (
                sum(max(0.0, v) for k, v in budget.violations(r, original_accuracy).items() if k != "accuracy_drop"),
                -r["accuracy"],
            ),
        )
    return max(measured, key=lambda r: r["accuracy"], default=None)


def describe_point(record: dict[str, Any], original_accuracy: float) -> str:
    return (
        f"{record['label']}: latency {record.get('latency_ratio', float('nan')):.2f}x, FLOPs {record['flops_ratio']:.2f}x, "
        f"size {record['size_ratio']:.2f}x, accuracy {record['accuracy']:.2%} "
        f"({(record['accuracy'] - original_accuracy) * 100:+.2f} pt)"
    )


def table(
    records: list[dict[str, Any]], chosen: dict[str, Any] | None, objective: str, original: dict[str, Any]
) -> str:
    """The front as markdown, the pick marked, with every candidate's counts below it."""
    lines = ["| | recipe | latency | FLOPs | size | accuracy | vs original |", "|---|---|---|---|---|---|---|"]
    for record in [original] + front(records, objective):
        mark = "**pick**" if chosen is not None and record.get("label") == chosen.get("label") else ""
        lines.append(
            f"| {mark} | {record['label']} | {record['latency_ratio']:.2f}x | {record['flops_ratio']:.2f}x | "
            f"{record['size_ratio']:.2f}x | {record['accuracy']:.2%} | "
            f"{(record['accuracy'] - original['accuracy']) * 100:+.2f} pt |"
        )
    return "\n".join(lines)


def plot(
    records: list[dict[str, Any]], chosen: dict[str, Any] | None, objective: str, original: dict[str, Any], path: Path
) -> Path | None:
    """Accuracy against the objective for every measured candidate, the front joined, the pick ringed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    key = OBJECTIVES[objective]
    measured = [r for r in records if r.get("status") in ("ok", "slower", "not recovered")]
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    axis.scatter(
        [r[key] for r in measured], [r["accuracy"] * 100 for r in measured], s=14, color="0.6", label="candidates"
    )
    line = front(records, objective)
    axis.plot([r[key] for r in line], [r["accuracy"] * 100 for r in line], "o-", color="C0", label="front")
    axis.scatter([1.0], [original["accuracy"] * 100], marker="s", color="k", label="original")
    if chosen is not None:
        axis.scatter(
            [chosen[key]],
            [chosen["accuracy"] * 100],
            s=160,
            facecolors="none",
            edgecolors="C3",
            linewidths=2,
            label="pick",
        )
    axis.set_xlabel(f"{objective} (ratio to the original)")
    axis.set_ylabel("accuracy on the search split (%)")
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write(folder: Path, summary: dict[str, Any]) -> None:
    """``search.json`` (everything) and ``search.md`` (the front and how it was searched)."""
    (folder / "search.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    original, chosen = summary["original"], summary["chosen"]
    lines = [
        f"# Search: {summary['settings']['runtime']}, {summary['budget']}",
        "",
        summary["message"],
        "",
        table(summary["candidates"], chosen, summary["settings"]["objective"], original),
        "",
        f"{len(summary['candidates'])} candidates measured in {summary['seconds']:.0f} s; counts by status: "
        + ", ".join(f"{k} {v}" for k, v in summary["statuses"].items())
        + ".",
        "Accuracy on the search split; latency in the target runtime beside the original, in the same process.",
    ]
    if summary.get("pays_off"):
        lines += [
            "",
            "## Where each method pays off on this runtime",
            "",
            "Each method alone at its fastest declared point, timed beside the original before the search; a method "
            f"below {summary['settings']['min_speedup']:g}x was left out.",
            "",
            payoff_table(summary["pays_off"], summary["settings"]["min_speedup"]),
        ]
    if summary.get("test"):
        test = summary["test"]
        lines += [
            "",
            f"Test split, measured once: original {test['original']:.2%}, pick {test['pick']:.2%}, "
            f"difference {test['difference']}, McNemar p {test['mcnemar_p']}.",
        ]
    (folder / "search.md").write_text("\n".join(lines) + "\n")


def payoff_table(probes: dict[str, dict[str, Any]], min_speedup: float) -> str:
    """The probes as markdown: where each method pays off on this runtime."""
    lines = ["| method | fastest declared point | speed vs original | pays off here |", "|---|---|---|---|"]
    for name, record in probes.items():
        if "speed" in record:
            lines.append(
                f"| {name} | {record['label']} | {record['speed']:.2f}x | "
                f"{'yes' if record['speed'] >= min_speedup else 'no: left out'} |"
            )
        else:
            lines.append(
                f"| {name} | {record['label']} | refused: {record['reason'][:120]} | kept (its points say why) |"
            )
    return "\n".join(lines)
