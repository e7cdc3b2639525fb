"""The report's statistics: the paired tests (Wilcoxon, t-test, none) on known pairs, what they say without power,
and the Holm adjustment."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import ttest_rel

from medvtab.bench.report.stats import holm, paired_test, verdict


def test_wilcoxon_on_known_pairs():
    ours = np.linspace(0.60, 0.70, 10)
    res = paired_test(ours, ours - np.linspace(0.01, 0.10, 10))  # DynaMer better in every one of 10 pairs
    assert res["test"] == "Wilcoxon signed-rank" and res["n"] == 10
    assert (res["wins"], res["ties"], res["losses"]) == (10, 0, 0)
    assert res["statistic"] == 0.0
    assert res["p"] == pytest.approx(2 / 2 ** 10)  # exact: only the all-positive sign pattern is as extreme
    assert res["mean_diff"] == pytest.approx(0.055)
    assert verdict(res, res["p"]) == "significant: DynaMer better"
    assert verdict(res, 0.2) == "within noise (not significant after Holm; p=0.2)"


def test_wilcoxon_without_power_says_so():
    a = np.array([0.5, 0.6, 0.7, 0.8, 0.5, 0.6, 0.7])
    b = a - np.array([0.1, 0.2, 0.3, 0.4, 0.0, 0.0, 0.0])  # 7 pairs, only 4 non-zero differences
    res = paired_test(a, b)
    assert res["test"] == "Wilcoxon signed-rank" and res["ties"] == 3
    assert "cannot reach significance" in res["note"] and "0.125" in res["note"]  # 2 / 2**4
    assert not res["p"] < 0.05
    assert verdict(res, res["p"]).startswith("within noise (not significant after Holm; p=")


def test_paired_t_test_for_few_pairs():
    a, b = [0.71, 0.65, 0.80, 0.62], [0.70, 0.60, 0.74, 0.61]
    res = paired_test(a, b)
    expected = ttest_rel(a, b)
    assert res["test"] == "paired t-test" and res["n"] == 4
    assert res["statistic"] == pytest.approx(expected.statistic)
    assert res["p"] == pytest.approx(expected.pvalue)
    assert "little power" in res["note"]


def test_too_few_pairs_or_no_difference_means_no_test():
    two = paired_test([0.9, 0.8], [0.1, 0.2])
    assert two["test"] == "none" and math.isnan(two["p"])
    assert "not significant" in two["note"] and "no power" in two["note"]
    assert verdict(two, math.nan) == two["note"]
    same = paired_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same["test"] == "none" and "no difference" in same["note"]
    constant = paired_test([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])
    assert constant["test"] == "paired t-test" and math.isnan(constant["p"]) and "undefined" in constant["note"]
    assert paired_test([], [])["note"].startswith("no pairs")
    with pytest.raises(ValueError):
        paired_test([0.1, 0.2], [0.1])


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.02, math.nan, 0.5])
    assert adjusted[0] == pytest.approx(0.04) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.5)
    assert holm([0.04, 0.01]) == pytest.approx([0.04, 0.02])
    assert holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1, and never below a smaller p's adjusted value
