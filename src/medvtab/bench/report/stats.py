"""The report's statistics: mean and sample standard deviation over seeds; DynaMer against each baseline on
the paired (task, seed) accuracies: a two-sided Wilcoxon signed-rank test from :data:`MIN_WILCOXON` pairs on, a
paired t-test from :data:`MIN_TTEST` to :data:`MIN_WILCOXON` - 1 pairs, no test below that; p-values are
Holm-adjusted over the baselines; and the scaling trend: the least-squares slope of accuracy against
log10(parameters) with a bootstrap interval that resamples seeds within each sweep point."""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import ttest_rel, wilcoxon

MIN_WILCOXON, MIN_TTEST, ALPHA = 6, 3, 0.05


def mean_std(values) -> tuple[float, float, int]:
    """(mean, sample standard deviation (NaN for one value), count) of the finite values."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if not len(v):
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = np.array(pvalues, dtype=float)
    out = np.full(len(p), math.nan)
    idx = [i for i in np.argsort(p) if math.isfinite(p[i])]
    m, running = len(idx), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def paired_test(ours, theirs) -> dict:
    """Paired comparison of two accuracy arrays (same (task, seed) order).

    Returns n, mean difference (ours - theirs), wins/ties/losses, the test used ("Wilcoxon signed-rank",
    "paired t-test" or "none"), its statistic and two-sided p (NaN without a test), and a plain note on
    what the test can say."""
    a, b = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired_test: arrays of different shapes {a.shape} and {b.shape}")
    d = a - b
    n = len(d)
    out = {"n": n, "mean_diff": float(d.mean()) if n else math.nan, "wins": int((d > 0).sum()),
           "ties": int((d == 0).sum()), "losses": int((d < 0).sum()), "test": "none",
           "statistic": math.nan, "p": math.nan, "note": ""}
    if n == 0:
        out["note"] = "no pairs: nothing to compare"
    elif n < MIN_TTEST:
        out["note"] = (f"only {n} pair{'s' if n > 1 else ''}: too few for any test, so the difference is not "
                       f"significant (no power)")
    elif not d.any():
        out["note"] = f"identical in all {n} pairs: no difference"
    elif n >= MIN_WILCOXON:
        res = wilcoxon(a, b)
        out.update(test="Wilcoxon signed-rank", statistic=float(res.statistic), p=float(res.pvalue))
        nonzero = int((d != 0).sum())
        smallest = 2.0 / 2 ** nonzero
        if smallest > ALPHA:
            out["note"] = (f"only {nonzero} non-zero differences: the smallest p this test can give is "
                           f"{smallest:.3g}, so it cannot reach significance (no power)")
    else:
        if np.std(d, ddof=1) == 0:
            out.update(test="paired t-test", note=f"all {n} differences equal ({d[0]:+.4g}): t is undefined")
        else:
            res = ttest_rel(a, b)
            out.update(test="paired t-test", statistic=float(res.statistic), p=float(res.pvalue),
                       note=f"only {n} pairs: paired t-test (assumes normally distributed differences); "
                            f"little power")
    return out


def verdict(result: dict, p_adjusted: float) -> str:
    """In plain words: significant after Holm (and which way), within noise (not significant after Holm), or why
    there is no test."""
    if math.isfinite(p_adjusted) and p_adjusted < ALPHA:
        return f"significant: DynaMer {'better' if result['mean_diff'] > 0 else 'worse'}"
    if math.isfinite(p_adjusted):
        return (f"within noise (not significant after Holm; p={p_adjusted:.3g})"
                + (f": {result['note']}" if result["note"] else ""))
    return result["note"] or "no test"


BOOTSTRAP_REPS, BOOTSTRAP_SEED, CONFIDENCE = 2000, 0, 0.95


def _demeaned(values: np.ndarray, strata: np.ndarray) -> np.ndarray:
    """``values`` (..., n) minus the mean of its stratum along the last axis (one intercept per stratum)."""
    out = np.array(values, dtype=float)
    for s in np.unique(strata):
        at = strata == s
        out[..., at] -= out[..., at].mean(axis=-1, keepdims=True)
    return out


def log_slope(params, values, strata=None) -> float:
    """Least-squares slope of ``values`` against log10(``params``); each stratum (e.g. a task) has its own
    intercept, so the slope is the within-stratum trend. NaN where no stratum has two different x."""
    x, y = np.log10(np.asarray(params, dtype=float)), np.asarray(values, dtype=float)
    strata = np.zeros(len(x), dtype=int) if strata is None else np.asarray(strata)
    x, y = _demeaned(x, strata), _demeaned(y, strata)
    sxx = float((x * x).sum())
    return float((x * y).sum() / sxx) if sxx > 1e-24 else math.nan


def slope_interval(params, values, points, strata=None, reps: int = BOOTSTRAP_REPS,
                   seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """(slope, low, high): :func:`log_slope` and its percentile bootstrap interval at :data:`CONFIDENCE`. Each
    replicate redraws, within every sweep point (``points``: a label per value), as many of that point's values
    (its seeds) as it has, with replacement, and refits; the points themselves stay. A fixed RNG seed makes the
    interval reproducible. The interval is NaN where no point has two values (nothing to resample)."""
    x, y = np.log10(np.asarray(params, dtype=float)), np.asarray(values, dtype=float)
    strata = np.zeros(len(x), dtype=int) if strata is None else np.asarray(strata)
    slope = log_slope(params, values, strata)
    members = [np.flatnonzero(np.asarray(points) == p) for p in dict.fromkeys(points)]
    if not math.isfinite(slope) or all(len(m) < 2 for m in members):
        return slope, math.nan, math.nan
    rng = np.random.default_rng(seed)
    order = np.concatenate(members)  # each point's positions, drawn from its own members
    draws = np.concatenate([m[rng.integers(0, len(m), size=(reps, len(m)))] for m in members], axis=1)
    xs, ys = _demeaned(x[order], strata[order]), _demeaned(y[draws], strata[order])
    slopes = (ys * xs).sum(axis=1) / (xs * xs).sum()
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(slopes, [tail, 100 - tail])
    return slope, float(low), float(high)


def trend_verdict(slope: float, low: float, high: float) -> str:
    """In plain words, from the slope and its interval."""
    if not math.isfinite(slope):
        return "no trend to fit (fewer than two sizes finished)"
    if not (math.isfinite(low) and math.isfinite(high)):
        return "no interval (one seed per point)"
    if low > 0:
        return "more parameters help"
    if high < 0:
        return "more parameters hurt"
    return "no clear trend (interval spans 0)"
