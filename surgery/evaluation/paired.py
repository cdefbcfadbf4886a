"""Paired comparisons of two models on the same test images, and accuracy-vs-FLOPs curves.

Two methods measured on the same images are compared image by image, not by their accuracies alone:
- :func:`mcnemar`: the exact McNemar test (a two-sided binomial test on the images exactly one of
  the two gets right, ``scipy.stats.binomtest``);
- :func:`bootstrap_difference`: the accuracy difference with a 95 % bootstrap interval, resampling
  images (``scipy.stats.bootstrap`` on the per-image differences, so the pairing is kept).

A token reduction's FLOPs depend on the schedule each method solves for, so two methods never land
on the same FLOPs; :class:`Curve` holds a method's points over its setting (r, a FLOPs target) and
:func:`compare_at` compares two curves at equal *measured* FLOPs by linear interpolation between the
two points around the FLOPs asked for (each image's correctness is interpolated with the same
weights, so the bootstrap interval is that of the interpolated accuracies); McNemar, which needs
right/wrong per image, is taken between each curve's measured point nearest to those FLOPs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from surgery.errors import SurgeryError


def _correct(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise SurgeryError(f"{name}: no images to compare")
    return array


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _correct(a, "first model"), _correct(b, "second model")
    if a.shape != b.shape:
        raise SurgeryError(f"a paired comparison needs the same images: {a.size} results against {b.size}")
    return a, b


@dataclasses.dataclass(frozen=True)
class McNemar:
    """Images only the first model gets right (``only_a``), only the second (``only_b``), and the
    exact two-sided p-value of "both are equally often right" (1.0 when they never disagree)."""

    only_a: int
    only_b: int
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def mcnemar(correct_a: Any, correct_b: Any) -> McNemar:
    """Exact McNemar test of two models' right/wrong answers (booleans or 0/1) on the same images."""
    from scipy.stats import binomtest

    a, b = _pair(correct_a, correct_b)
    if not (np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all()):
        raise SurgeryError("McNemar's test takes right/wrong per image (0 or 1), not interpolated scores")
    only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return McNemar(only_a, only_b, min(1.0, p))


@dataclasses.dataclass(frozen=True)
class Difference:
    """Accuracy of the first model minus the second's, with a bootstrap interval (``level``)."""

    difference: float
    low: float
    high: float
    level: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return f"{self.difference * 100:+.2f} pt [{self.low * 100:+.2f}, {self.high * 100:+.2f}]"


def bootstrap_difference(
    correct_a: Any, correct_b: Any, resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> Difference:
    """The accuracy difference ``a - b`` and its percentile bootstrap interval over images (seeded)."""
    from scipy.stats import bootstrap

    a, b = _pair(correct_a, correct_b)
    differences = a - b
    observed = float(differences.mean())
    if np.all(differences == differences[0]):  # no spread to resample: the interval is the point
        return Difference(observed, observed, observed, level)
    import inspect

    keyword = "rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state"  # scipy < 1.15
    seeded = {keyword: np.random.default_rng(seed)}
    result = bootstrap(
        (differences,),
        np.mean,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        vectorized=True,
        **seeded,
    )
    interval = result.confidence_interval
    return Difference(observed, float(interval.low), float(interval.high), level)


@dataclasses.dataclass
class Point:
    """One setting of a method: its measured FLOPs ratio to the original and per-image correctness."""

    setting: str
    flops: float
    correct: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())


@dataclasses.dataclass
class Curve:
    """A method's accuracy against measured FLOPs over its settings, sorted by FLOPs."""

    name: str
    points: list[Point] = dataclasses.field(default_factory=list)

    def add(self, setting: str, flops: float, correct: Any) -> Point:
        point = Point(setting, float(flops), _correct(correct, self.name).astype(bool).astype(np.float64))
        self.points.append(point)
        self.points.sort(key=lambda p: p.flops)
        return point

    @property
    def span(self) -> tuple[float, float]:
        return self.points[0].flops, self.points[-1].flops

    def covers(self, flops: float) -> bool:
        return bool(self.points) and self.span[0] <= flops <= self.span[1]

    def at(self, flops: float) -> np.ndarray:
        """Per-image correctness interpolated linearly at ``flops`` (its mean is the accuracy there)."""
        if not self.covers(flops):
            low, high = self.span if self.points else (float("nan"), float("nan"))
            raise SurgeryError(
                f"{self.name}: measured FLOPs span {low:.3f}-{high:.3f}, not {flops:.3f}; add settings that reach it"
            )
        xs = [p.flops for p in self.points]
        upper = min(int(np.searchsorted(xs, flops)), len(xs) - 1)
        lower = max(upper - 1, 0)
        a, b = self.points[lower], self.points[upper]
        weight = 0.0 if b.flops == a.flops else (flops - a.flops) / (b.flops - a.flops)
        return (1.0 - weight) * a.correct + weight * b.correct

    def nearest(self, flops: float) -> Point:
        return min(self.points, key=lambda p: abs(p.flops - flops))


def compare_at(a: Curve, b: Curve, flops: float, resamples: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """``a`` against ``b`` at equal measured FLOPs: interpolated accuracies, their bootstrap interval,
    and McNemar between the two measured points nearest to ``flops``."""
    at_a, at_b = a.at(flops), b.at(flops)
    near_a, near_b = a.nearest(flops), b.nearest(flops)
    return {
        "flops": flops,
        "accuracy_a": float(at_a.mean()),
        "accuracy_b": float(at_b.mean()),
        "difference": bootstrap_difference(at_a, at_b, resamples=resamples, seed=seed),
        "mcnemar": mcnemar(near_a.correct, near_b.correct),
        "nearest": {a.name: (near_a.setting, near_a.flops), b.name: (near_b.setting, near_b.flops)},
    }


def paired_columns(reference: Any, candidate: Any, resamples: int = 10_000, seed: int = 0) -> list[str]:
    """Table cells for ``candidate`` against ``reference`` on the same images: the accuracy
    difference with its 95 % interval, the images each alone gets right, and McNemar's p."""
    difference = bootstrap_difference(candidate, reference, resamples=resamples, seed=seed)
    test = mcnemar(candidate, reference)
    return [str(difference), f"+{test.only_a} / -{test.only_b}", format_p(test.p_value)]


def format_p(p: float) -> str:
    return "<1e-4" if p < 1e-4 else f"{p:.2g}" if p < 0.01 else f"{p:.2f}"


def correct_of(logits: Any, labels: Any) -> np.ndarray:
    """Per-image right (1.0) / wrong (0.0) from logits and labels."""
    import torch

    return (torch.as_tensor(logits).argmax(-1) == torch.as_tensor(labels)).double().numpy()


PAIRED_HEADER: Sequence[str] = ("difference vs reference [95 % CI]", "only right / only wrong", "McNemar p")
