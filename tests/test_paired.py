"""Paired statistics: exact McNemar, bootstrap intervals of an accuracy difference, curves over FLOPs."""

from math import comb

import numpy as np
import pytest

from surgery.errors import SurgeryError
from surgery.evaluation.paired import Curve, bootstrap_difference, compare_at, correct_of, mcnemar, paired_columns


def exact_two_sided(only_a: int, only_b: int) -> float:
    """The binomial tail, summed by hand in exact integers."""
    n, k = only_a + only_b, min(only_a, only_b)
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n)


def pairs(only_a: int, only_b: int, both: int = 50, neither: int = 7):
    a = [1] * only_a + [0] * only_b + [1] * both + [0] * neither
    b = [0] * only_a + [1] * only_b + [1] * both + [0] * neither
    return np.array(a), np.array(b)


@pytest.mark.parametrize("only_a, only_b", [(1, 9), (0, 5), (9, 1), (12, 12), (30, 11), (0, 1)])
def test_mcnemar_is_the_exact_binomial_test(only_a, only_b):
    test = mcnemar(*pairs(only_a, only_b))
    assert (test.only_a, test.only_b) == (only_a, only_b)
    assert test.p_value == pytest.approx(exact_two_sided(only_a, only_b), rel=1e-12)


def test_mcnemar_of_identical_answers_is_one_and_refuses_fractions_and_mismatch():
    a, _ = pairs(3, 4)
    assert mcnemar(a, a).p_value == 1.0
    with pytest.raises(SurgeryError, match="right/wrong"):
        mcnemar(a * 0.5, a)
    with pytest.raises(SurgeryError, match="same images: 64 results against 63"):
        mcnemar(a, a[:-1])
    with pytest.raises(SurgeryError, match="no images"):
        mcnemar([], [])


def test_bootstrap_interval_holds_the_difference_is_seeded_and_narrows_with_more_images():
    a, b = pairs(30, 10)
    first = bootstrap_difference(a, b, seed=3)
    assert first.difference == pytest.approx(20 / len(a))
    assert first.low < first.difference < first.high
    assert bootstrap_difference(a, b, seed=3) == first  # same seed, same interval
    # the percentile interval of a mean is close to the normal one: sd of the differences / sqrt(n)
    d = (a - b).astype(np.float64)
    half = 1.959964 * d.std() / np.sqrt(len(d))
    assert (first.high - first.low) / 2 == pytest.approx(half, rel=0.1)
    wide = np.tile(a, 10), np.tile(b, 10)
    assert bootstrap_difference(*wide).high - bootstrap_difference(*wide).low < (first.high - first.low) / 2.5
    same = bootstrap_difference(a, a)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    assert str(bootstrap_difference(a, b, seed=3)).startswith("+20.")


def test_curve_interpolates_per_image_and_compares_at_equal_flops():
    rng = np.random.default_rng(0)
    right = rng.random((3, 500)) < np.array([[0.9], [0.8], [0.6]])
    tome, prune = Curve("tome"), Curve("prune")
    tome.add("r=4", 0.8, right[0])
    tome.add("r=12", 0.4, right[2])  # added out of order: kept sorted by FLOPs
    tome.add("r=8", 0.6, right[1])
    assert [p.setting for p in tome.points] == ["r=12", "r=8", "r=4"]
    half_way = tome.at(0.7)
    np.testing.assert_allclose(half_way, 0.5 * right[0] + 0.5 * right[1])
    assert tome.at(0.6).mean() == pytest.approx(right[1].mean())
    prune.add("0.9", 0.9, right[1])
    prune.add("0.5", 0.5, right[2])
    result = compare_at(tome, prune, 0.7)
    expected_prune = 0.5 * right[1] + 0.5 * right[2]
    assert result["accuracy_b"] == pytest.approx(expected_prune.mean())
    assert result["difference"].difference == pytest.approx(half_way.mean() - expected_prune.mean())
    assert result["nearest"] == {"tome": ("r=8", 0.6), "prune": ("0.5", 0.5)}  # 0.6 and 0.8 tie: the first
    assert result["mcnemar"] == mcnemar(right[1], right[2])
    with pytest.raises(SurgeryError, match=r"tome: measured FLOPs span 0.400-0.800, not 0.300"):
        tome.at(0.3)


def test_paired_columns_and_correct_of():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    np.testing.assert_array_equal(correct_of(logits, [1, 1, 1]), [1.0, 0.0, 1.0])
    a, b = pairs(1, 9)
    cells = paired_columns(reference=a, candidate=b)
    assert cells[1] == "+9 / -1" and cells[2] == "0.02"  # 0.0215: two decimals from 0.01 up
