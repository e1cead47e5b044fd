"""Statistics behind `lmlab-report`: pure functions over numpy arrays, scipy for every distribution.

Nothing here reads files, so the numbers can be checked in isolation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
# Fixed seeds keep the bootstrap/permutation numbers reproducible between two runs of the report.
RNG_SEED = 0
N_RESAMPLES = 9999


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    min: float
    max: float


def summarize(values: Sequence[float], ci: str = "t") -> Summary:
    """n, mean, sample std (ddof=1), 95% CI of the mean (Student t or scipy's BCa bootstrap), min, max."""
    x = np.asarray(values, dtype=float)
    n = x.size
    if n == 0:
        nan = float("nan")
        return Summary(0, nan, nan, nan, nan, nan, nan)
    mean = float(np.mean(x))
    std = float(np.std(x, ddof=1)) if n > 1 else float("nan")
    low, high = mean_ci(x, ci)
    return Summary(n, mean, std, low, high, float(np.min(x)), float(np.max(x)))


def mean_ci(x: np.ndarray, method: str = "t") -> tuple[float, float]:
    n = x.size
    if n < 2:
        return float("nan"), float("nan")
    if method == "t":
        if np.ptp(x) == 0:
            # Zero spread: scipy returns (nan, nan) for scale 0; the honest interval is the point itself.
            return float(x[0]), float(x[0])
        low, high = stats.t.interval(CONFIDENCE, n - 1, loc=np.mean(x), scale=stats.sem(x))
        return float(low), float(high)
    if method == "bootstrap":
        if np.ptp(x) == 0:
            return float(x[0]), float(x[0])
        res = stats.bootstrap(
            (x,), np.mean, confidence_level=CONFIDENCE, n_resamples=N_RESAMPLES, rng=RNG_SEED, method="BCa"
        )
        return float(res.confidence_interval.low), float(res.confidence_interval.high)
    raise ValueError(f"unknown CI method {method!r}; use 't' or 'bootstrap'")


@dataclass(frozen=True)
class Comparison:
    """One group against the baseline; `diff` is always mean(group) - mean(baseline)."""

    paired: bool
    test: str  # "paired_t" or "welch": which t-test filled p_t and the diff CI
    diff: float
    diff_ci_low: float
    diff_ci_high: float
    p_t: float
    p_permutation: float


def _mean_diff_paired(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x - y, axis=axis)


def _mean_diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def compare(
    values: Sequence[float],
    seeds: Sequence[object],
    base_values: Sequence[float],
    base_seeds: Sequence[object],
) -> Comparison:
    """Compare a group with the baseline.

    Paired (ttest_rel + paired permutation) only when both groups ran exactly the same set of seeds, each
    once: pairing on a partial overlap would make `diff` differ from the difference of the reported means.
    Otherwise Welch's t-test and an independent permutation test on all values.
    """
    x = np.asarray(values, dtype=float)
    y = np.asarray(base_values, dtype=float)
    nan = float("nan")
    diff = float(np.mean(x) - np.mean(y)) if x.size and y.size else nan
    paired = (
        x.size >= 2
        and None not in seeds
        and len(set(seeds)) == len(seeds)
        and len(set(base_seeds)) == len(base_seeds)
        and set(seeds) == set(base_seeds)
    )
    if paired:
        order = {s: i for i, s in enumerate(base_seeds)}
        y = y[[order[s] for s in seeds]]
        d = x - y
        if np.ptp(d) == 0:
            # Constant differences: t is undefined (scipy gives nan); report the exact difference.
            return Comparison(True, "paired_t", diff, diff, diff, nan, nan)
        res = stats.ttest_rel(x, y)
        ci = res.confidence_interval(CONFIDENCE)
        perm = stats.permutation_test(
            (x, y), _mean_diff_paired, permutation_type="samples", vectorized=True,
            n_resamples=N_RESAMPLES, rng=RNG_SEED,
        )
        return Comparison(True, "paired_t", diff, float(ci.low), float(ci.high), float(res.pvalue),
                          float(perm.pvalue))
    if x.size < 2 or y.size < 2:
        return Comparison(False, "welch", diff, nan, nan, nan, nan)
    res = stats.ttest_ind(x, y, equal_var=False)
    ci = res.confidence_interval(CONFIDENCE)
    perm = stats.permutation_test(
        (x, y), _mean_diff, permutation_type="independent", vectorized=True,
        n_resamples=N_RESAMPLES, rng=RNG_SEED,
    )
    return Comparison(False, "welch", diff, float(ci.low), float(ci.high), float(res.pvalue),
                      float(perm.pvalue))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values; NaN entries stay NaN and do not count as comparisons.

    scipy only ships Benjamini-Hochberg/Yekutieli (false_discovery_control), and statsmodels is not a
    dependency, so this is the textbook step-down: p_(i) * (m - i + 1), made monotone, capped at 1.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = p[order] * (m - np.arange(m))
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def expected_max_curve(scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Expected best score (and its std) after n = 1..N configurations, Dodge et al. 2019 "Show Your Work".

    The n draws are taken with replacement from the empirical distribution of the N observed scores, so
    P(max_n = v_(i)) = (i/N)^n - ((i-1)/N)^n for the sorted scores v_(1) <= ... <= v_(N).
    """
    v = np.sort(np.asarray(scores, dtype=float))
    big_n = v.size
    i = np.arange(1, big_n + 1)
    ns = np.arange(1, big_n + 1)[:, None]
    weights = (i / big_n) ** ns - ((i - 1) / big_n) ** ns  # (n, N), each row sums to 1
    mean = weights @ v
    var = weights @ v**2 - mean**2
    return mean, np.sqrt(np.clip(var, 0.0, None))


def encode_labels(*columns: Sequence[object]) -> tuple[list[object], list[np.ndarray]]:
    """Map labels of several columns onto one shared 0..K-1 code book (sorted by their string form)."""
    classes = sorted({v for col in columns for v in col}, key=str)
    index = {c: k for k, c in enumerate(classes)}
    return classes, [np.fromiter((index[v] for v in col), dtype=np.int64) for col in columns]


def macro_f1_resampled(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, idx: np.ndarray) -> np.ndarray:
    """Macro-F1 of each resample (rows of `idx`), over the classes present in that resample's labels or
    predictions (sklearn's convention, so the full-data value equals sklearn's f1_score(average='macro'))."""
    idx = np.atleast_2d(idx)
    t = y_true[idx]
    p = y_pred[idx]
    f1 = np.empty(idx.shape[:-1] + (n_classes,))
    for k in range(n_classes):
        tp = np.sum((t == k) & (p == k), axis=-1)
        denom = np.sum(t == k, axis=-1) + np.sum(p == k, axis=-1)  # 2tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            f1[..., k] = np.where(denom > 0, 2 * tp / denom, np.nan)
    return np.nanmean(f1, axis=-1)


def macro_f1(y_true: Sequence[object], y_pred: Sequence[object]) -> float:
    classes, (t, p) = encode_labels(y_true, y_pred)
    return float(macro_f1_resampled(t, p, len(classes), np.arange(t.size))[0])


@dataclass(frozen=True)
class PairedBootstrap:
    n_examples: int
    n_pairs: int
    f1_a: float
    f1_b: float
    diff: float
    ci_low: float
    ci_high: float
    pvalue: float
    n_resamples: int


def paired_bootstrap_f1(
    y_true: np.ndarray, preds_a: Sequence[np.ndarray], preds_b: Sequence[np.ndarray], n_classes: int,
    n_resamples: int = N_RESAMPLES,
) -> PairedBootstrap:
    """Paired bootstrap over test examples of macro-F1(A) - macro-F1(B).

    `preds_a[j]`/`preds_b[j]` are one matched pair of runs (e.g. the same seed); every resample draws one
    set of example indices and applies it to all pairs, and the statistic is the mean difference over the
    pairs. CI: scipy's BCa bootstrap. p-value (two-sided, H0: no difference): the bootstrap distribution
    shifted to mean zero, i.e. the share of resamples with |d* - d| >= |d| (+1 smoothing).
    """
    n = y_true.size
    pa = np.stack(preds_a)
    pb = np.stack(preds_b)

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        if idx.ndim == 1:
            idx = idx[None, :]
        fa = np.mean([macro_f1_resampled(y_true, a, n_classes, idx) for a in pa], axis=0)
        fb = np.mean([macro_f1_resampled(y_true, b, n_classes, idx) for b in pb], axis=0)
        return fa - fb if fa.size > 1 else (fa - fb)[0]

    full = np.arange(n)
    f1_a = float(np.mean([macro_f1_resampled(y_true, a, n_classes, full)[0] for a in pa]))
    f1_b = float(np.mean([macro_f1_resampled(y_true, b, n_classes, full)[0] for b in pb]))
    diff = f1_a - f1_b
    if all(np.array_equal(a, b) for a, b in zip(pa, pb, strict=True)):
        # Identical predictions: every resample gives 0 and BCa is undefined; the answer is exact.
        return PairedBootstrap(n, len(pa), f1_a, f1_b, 0.0, 0.0, 0.0, 1.0, n_resamples)
    res = stats.bootstrap(
        (full,), statistic, vectorized=True, n_resamples=n_resamples, batch=500, confidence_level=CONFIDENCE,
        method="BCa", rng=RNG_SEED,
    )
    dist = np.asarray(res.bootstrap_distribution)
    extreme = np.count_nonzero(np.abs(dist - diff) >= abs(diff) - 1e-12)
    pvalue = float((extreme + 1) / (dist.size + 1))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return PairedBootstrap(n, len(pa), f1_a, f1_b, diff, low, high, pvalue, n_resamples)
