"""Accuracy against measured FLOPs over a method's setting, and paired comparisons at equal FLOPs.

Shared by the token reduction benchmark and the proof table: each point is a model rewritten with
one setting (ToMe's r, ...), its FLOPs measured with torch's flop counter (batch 1) as a ratio to the
original, and its right/wrong answer on every test image, so two methods are compared on the same
images (surgery.evaluation.paired).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from surgery.errors import SurgeryError
from surgery.evaluation.accuracy import predict_logits
from surgery.evaluation.flops import model_flops
from surgery.evaluation.paired import Curve, bootstrap_difference, compare_at, correct_of, format_p, mcnemar

from _common import markdown_table


def sweep(
    name: str,
    build: Callable[[Any], torch.nn.Module],
    settings: Iterable[Any],
    pixels: torch.Tensor,
    labels: torch.Tensor,
    full_flops: float,
    floor: float = 0.25,
) -> Curve:
    """``name``'s curve: ``build(setting)`` for each setting until the FLOPs fall under ``floor``, stop
    falling (a schedule capped at what the blocks can remove), or the setting is refused."""
    curve = Curve(name)
    previous = None
    for setting in settings:
        try:
            model = build(setting)
        except SurgeryError as error:
            print(f"    {name} {setting}: refused ({str(error).splitlines()[0][:100]})", flush=True)
            break
        ratio = model_flops(model, pixels[:1]) / full_flops
        if previous is not None and ratio > previous - 1e-3:
            print(
                f"    {name} {setting}: FLOPs {ratio:.3f}, no lower than the last setting: the end of its reach",
                flush=True,
            )
            break
        previous = ratio
        point = curve.add(str(setting), ratio, correct_of(predict_logits(model, pixels), labels))
        print(f"    {name} {setting}: FLOPs {ratio:.3f}, accuracy {point.accuracy:.2%}", flush=True)
        if ratio < floor:
            break
    return curve


def targets_table(original: Any, curves: list[Curve], targets: Iterable[float]) -> str:
    """Each method at each FLOPs target (interpolated), against the original on the same images."""
    rows = []
    for target in targets:
        for curve in curves:
            if not curve.covers(target):
                rows.append(
                    [
                        f"{target:.2f}",
                        curve.name,
                        f"out of reach (measured {curve.span[0]:.3f}-{curve.span[1]:.3f})",
                        "-",
                        "-",
                        "-",
                        "-",
                    ]
                )
                continue
            at, near = curve.at(target), curve.nearest(target)
            test = mcnemar(near.correct, original)
            rows.append(
                [
                    f"{target:.2f}",
                    curve.name,
                    f"{at.mean():.2%}",
                    f"{near.setting} ({near.flops:.3f})",
                    str(bootstrap_difference(at, original)),
                    f"+{test.only_a} / -{test.only_b}",
                    format_p(test.p_value),
                ]
            )
    header = [
        "FLOPs",
        "method",
        "accuracy (interpolated)",
        "nearest measured setting (FLOPs)",
        "vs original [95 % CI]",
        "nearest: only right / only wrong vs original",
        "McNemar p (nearest)",
    ]
    return markdown_table(header, rows)


def pairs_table(curves: list[Curve], targets: Iterable[float]) -> tuple[str, list[dict[str, Any]]]:
    """Every pair of methods at every target both reach: difference [95 % CI] and McNemar."""
    rows, records = [], []
    for target in targets:
        for i, a in enumerate(curves):
            for b in curves[i + 1 :]:
                if not (a.covers(target) and b.covers(target)):
                    continue
                result = compare_at(a, b, target)
                test = result["mcnemar"]
                rows.append(
                    [
                        f"{target:.2f}",
                        f"{a.name} - {b.name}",
                        f"{result['accuracy_a']:.2%}",
                        f"{result['accuracy_b']:.2%}",
                        str(result["difference"]),
                        f"+{test.only_a} / -{test.only_b}",
                        format_p(test.p_value),
                    ]
                )
                records.append(
                    {
                        "flops": target,
                        "a": a.name,
                        "b": b.name,
                        "accuracy_a": result["accuracy_a"],
                        "accuracy_b": result["accuracy_b"],
                        "difference": result["difference"].to_dict(),
                        "mcnemar": test.to_dict(),
                        "nearest": result["nearest"],
                    }
                )
    header = [
        "FLOPs",
        "a - b",
        "a",
        "b",
        "difference [95 % CI]",
        "nearest points: only a right / only b right",
        "McNemar p",
    ]
    return markdown_table(header, rows), records


def curve_records(curves: list[Curve]) -> dict[str, list[dict[str, Any]]]:
    return {
        c.name: [{"setting": p.setting, "flops": p.flops, "accuracy": p.accuracy} for p in c.points] for c in curves
    }


def plot(curves: list[Curve], original: float, path: Path, title: str, targets: Iterable[float] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for curve in curves:
        ax.plot(
            [p.flops for p in curve.points],
            [p.accuracy * 100 for p in curve.points],
            marker="o",
            markersize=3,
            label=curve.name,
        )
    ax.axhline(original * 100, color="black", linestyle="--", linewidth=1, label="original")
    for target in targets:
        ax.axvline(target, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("measured FLOPs / original (torch flop counter, batch 1)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
