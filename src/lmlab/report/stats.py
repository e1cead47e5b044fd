"""Statistics behind `lmlab-report`: pure functions over numpy arrays, scipy for every distribution.

Nothing here reads files, so the numbers can be checked in isolation (tests/test_report_stats.py checks them
against scipy, statsmodels and exact enumeration).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
POWER = 0.8
# Fixed seeds keep the bootstrap/permutation numbers reproducible between two runs of the report.
RNG_SEED = 0
N_RESAMPLES = 9999
# BCa covers far below 95% with few seeds (simulated 50% / 71% / 84% at n = 2 / 3 / 5): below this the t interval.
MIN_BOOTSTRAP_N = 10
# Permutation statistics within this (relative to the data's magnitude) of the observed one are ties, so equal
# metric values (accuracies are k/N) tie instead of differing by float noise.
PERMUTATION_RTOL = 1e-9
# Probability of improvement compares values rounded to this many significant digits (of the largest |value|).
SIGNIFICANT_DIGITS = 12
# Exact enumeration up to this many assignments (2^16 sign flips; C(N, n) splits), Monte Carlo above.
MAX_EXACT = 65536
# Differences whose spread is below this (relative to the data's magnitude) are constant: float rounding
# (baseline + 0.01 gives a spread of 1e-16) must not turn into a t statistic of 1e15.
CONSTANT_RTOL = 1e-9
MAX_SEEDS_NEEDED = 10000


def finite(values: Sequence[float]) -> tuple[np.ndarray, int]:
    """The finite values and how many were not (NaN/inf are left out of every statistic and counted)."""
    x = np.asarray(values, dtype=float)
    ok = np.isfinite(x)
    return x[ok], int(np.count_nonzero(~ok))


def is_constant(x: np.ndarray, scale: float | None = None) -> bool:
    if x.size < 2:
        return True
    ref = max(1.0, float(np.max(np.abs(x))) if scale is None else scale)
    return float(np.ptp(x)) <= CONSTANT_RTOL * ref


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    min: float
    max: float
    ci_method: str  # "t" or "bootstrap": what the interval really is (bootstrap falls back to t below 10)


def summarize(values: Sequence[float], ci: str = "t") -> Summary:
    """n, mean, sample std (ddof=1), 95% CI of the mean (Student t, or BCa bootstrap from 10 values), min, max."""
    x = np.asarray(values, dtype=float)
    n = x.size
    method = "bootstrap" if ci == "bootstrap" and n >= MIN_BOOTSTRAP_N else "t"
    if ci not in ("t", "bootstrap"):
        raise ValueError(f"unknown CI method {ci!r}; use 't' or 'bootstrap'")
    if n == 0:
        nan = float("nan")
        return Summary(0, nan, nan, nan, nan, nan, nan, method)
    mean = float(np.mean(x))
    std = float(np.std(x, ddof=1)) if n > 1 else float("nan")
    low, high = mean_ci(x, method)
    return Summary(n, mean, std, low, high, float(np.min(x)), float(np.max(x)), method)


def mean_ci(x: np.ndarray, method: str = "t") -> tuple[float, float]:
    n = x.size
    if n < 2:
        return float("nan"), float("nan")
    if is_constant(x):
        # Zero spread: scipy returns (nan, nan) for scale 0; the honest interval is the point itself.
        return float(np.mean(x)), float(np.mean(x))
    if method == "t":
        low, high = stats.t.interval(CONFIDENCE, n - 1, loc=np.mean(x), scale=stats.sem(x))
        return float(low), float(high)
    if method == "bootstrap":
        res = stats.bootstrap(
            (x,), np.mean, confidence_level=CONFIDENCE, n_resamples=N_RESAMPLES, rng=RNG_SEED, method="BCa"
        )
        return float(res.confidence_interval.low), float(res.confidence_interval.high)
    raise ValueError(f"unknown CI method {method!r}; use 't' or 'bootstrap'")


def _quantize(*arrays: np.ndarray) -> list[np.ndarray]:
    """Integers on one grid: SIGNIFICANT_DIGITS digits of the largest |value| (ties stay ties, sums are exact)."""
    biggest = max((float(np.max(np.abs(a))) for a in arrays if a.size), default=0.0)
    if biggest == 0:
        return [np.zeros(a.shape, dtype=np.int64) for a in arrays]
    scale = 10.0 ** (SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(biggest)))
    return [np.round(a * scale).astype(np.int64) for a in arrays]


def _two_sided(null: np.ndarray, obs: float, exact: bool, tol: float) -> float:
    # scipy's convention: twice the smaller one-sided p, capped at 1; Monte Carlo counts the observed assignment.
    # Assignments within `tol` of the observed statistic are ties (they are equal up to float rounding).
    ge, le = np.count_nonzero(null >= obs - tol), np.count_nonzero(null <= obs + tol)
    if exact:
        return float(min(1.0, 2 * min(ge, le) / null.size))
    return float(min(1.0, 2 * (min(ge, le) + 1) / (null.size + 1)))


def _tie_tol(*arrays: np.ndarray) -> float:
    """Sums that differ by less than this are the same sum: PERMUTATION_RTOL of the data's magnitude (float
    rounding is ~1e-16 of it; two different sums of k/N accuracies differ by at least 1/N)."""
    biggest = max((float(np.max(np.abs(a))) for a in arrays if a.size), default=0.0)
    return PERMUTATION_RTOL * max(1.0, biggest)


# Why these two tests are not scipy.stats.permutation_test (checked for issue 21 with scipy 1.17; the cases are in
# tests/test_report_v2.py::test_scipy_permutation_test_*). Without ties scipy gives bitwise the same p, but:
# - on floats its tie tolerance is 100 eps * |observed statistic|, not the data's magnitude: k/N accuracies whose
#   sums are equal up to float rounding stop tying (x = [170, 171, 171]/212, y = [171, 170, 172]/212 paired: p 0.75,
#   exact enumeration over fractions and ours: 1.0; unpaired x = [172, 174, 174]/212, y = [170, 172, 172]/212: 0.1
#   vs 0.3). A relative tolerance is 0 at an observed statistic of 0 and grows with it, never one band;
# - on integers (our _quantize grid, where scipy compares exactly) rounding each value is not additive,
#   round(2v) != 2 round(v), so sums that tie exactly stop tying (d = [1, -1, -1, 0, 2]/155: 0.875 vs 1.0;
#   x = [3, 3, 5]/155, y = [4, 1, 5]/155: 0.9 vs 1.0);
# - Monte Carlo (above MAX_EXACT) draws other assignments from the same seed, so every reported p changes;
# - it needs two values per sample, and compare() tests one value against several.
def permutation_p_paired(d: Sequence[float]) -> tuple[float, bool]:
    """Two-sided sign-flip permutation p of mean(d) and whether it is exact (all 2^n flips enumerated)."""
    d = np.asarray(d, dtype=float)
    n = d.size
    if n == 0:
        return float("nan"), False
    exact = 2**n <= MAX_EXACT
    if exact:
        signs = np.array(list(itertools.product([1.0, -1.0], repeat=n)))
    else:
        signs = np.random.default_rng(RNG_SEED).choice(np.array([1.0, -1.0]), size=(N_RESAMPLES, n))
    return _two_sided(signs @ d, float(d.sum()), exact, _tie_tol(d)), exact


def permutation_p_independent(x: Sequence[float], y: Sequence[float]) -> tuple[float, bool]:
    """Two-sided permutation p of mean(x) - mean(y) over splits of the pooled values (exact when few splits)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size == 0 or y.size == 0:
        return float("nan"), False
    pooled = np.concatenate([x, y])
    big_n, k = pooled.size, x.size
    exact = math.comb(big_n, k) <= MAX_EXACT
    if exact:
        idx = np.array(list(itertools.combinations(range(big_n), k)), dtype=np.int64)
        mask = np.zeros((idx.shape[0], big_n), dtype=bool)
        np.put_along_axis(mask, idx, True, axis=1)
    else:
        rng = np.random.default_rng(RNG_SEED)
        mask = np.argsort(rng.random((N_RESAMPLES, big_n)), axis=1) < k
    null = (mask @ pooled) / k - (~mask @ pooled) / (big_n - k)
    return _two_sided(null, float(x.mean() - y.mean()), exact, _tie_tol(pooled)), exact


def signflip_p_constant(d: np.ndarray) -> float:
    """Exact sign-flip p for constant differences: 1 when they are all zero, else 2/2^n (only all-same flips)."""
    if np.all(np.abs(d) <= CONSTANT_RTOL * max(1.0, float(np.max(np.abs(d))))):
        return 1.0
    return min(1.0, 2.0 / 2**d.size)


# --- effect sizes ------------------------------------------------------------------------------------------


def nct_cdf(t: float, df: float, ncp: float) -> float:
    """scipy's noncentral t cdf, with a fallback where it returns NaN (far tails, small df): P(T <= t) =
    E_V[Phi(t sqrt(V/df) - ncp)], V ~ chi2(df), by quadrature."""
    p = stats.nct.cdf(t, df, ncp)
    if np.isfinite(p):
        return float(p)
    p = 1 - stats.nct.sf(t, df, ncp)
    if np.isfinite(p):
        return float(p)
    from scipy import integrate

    val, _ = integrate.quad(
        lambda v: stats.norm.cdf(t * math.sqrt(v / df) - ncp) * stats.chi2.pdf(v, df), 0, np.inf, limit=200
    )
    return float(min(1.0, max(0.0, val)))


def _ncp_interval(t_obs: float, df: float) -> tuple[float, float]:
    """95% CI of the noncentrality parameter of a noncentral t, by inverting its cdf at the observed t."""
    lo_target, hi_target = 1 - ALPHA / 2, ALPHA / 2

    def solve(target: float) -> float:
        f = lambda ncp: nct_cdf(t_obs, df, ncp) - target  # noqa: E731 - decreasing in ncp
        width = 10.0 + abs(t_obs)
        a, b = t_obs - width, t_obs + width
        while f(a) < 0:
            a -= width
        while f(b) > 0:
            b += width
        return float(optimize.brentq(f, a, b, xtol=1e-10))

    return solve(lo_target), solve(hi_target)


@dataclass(frozen=True)
class Effect:
    name: str  # "d_z" (paired) or "hedges_g" (unpaired)
    value: float
    ci_low: float
    ci_high: float


def cohens_dz(d: np.ndarray) -> Effect:
    """Cohen's d_z = mean(d)/sd(d) of paired differences; CI from the noncentral t (Cumming & Finch 2001)."""
    nan = float("nan")
    n = d.size
    if n < 2 or is_constant(d):
        return Effect("d_z", nan, nan, nan)
    dz = float(np.mean(d) / np.std(d, ddof=1))
    lo, hi = _ncp_interval(dz * math.sqrt(n), n - 1)
    return Effect("d_z", dz, lo / math.sqrt(n), hi / math.sqrt(n))


def hedges_j(df: float) -> float:
    """Exact small-sample correction of Cohen's d (Hedges 1981): Γ(df/2) / (√(df/2) Γ((df-1)/2))."""
    return float(math.exp(special.gammaln(df / 2) - special.gammaln((df - 1) / 2)) / math.sqrt(df / 2))


def hedges_g(x: np.ndarray, y: np.ndarray) -> Effect:
    """Hedges' g of mean(x) - mean(y) over the pooled sd, its CI from the noncentral t, both times J."""
    nan = float("nan")
    nx, ny = x.size, y.size
    df = nx + ny - 2
    if nx < 1 or ny < 1 or df < 2:
        return Effect("hedges_g", nan, nan, nan)
    sp = math.sqrt(((nx - 1) * np.var(x, ddof=1 if nx > 1 else 0) + (ny - 1) * np.var(y, ddof=1 if ny > 1 else 0)) / df)
    if sp <= CONSTANT_RTOL * max(1.0, float(np.max(np.abs(np.concatenate([x, y]))))):
        return Effect("hedges_g", nan, nan, nan)
    d = float((np.mean(x) - np.mean(y)) / sp)
    scale = math.sqrt(1 / nx + 1 / ny)
    lo, hi = _ncp_interval(d / scale, df)
    j = hedges_j(df)
    return Effect("hedges_g", j * d, j * lo * scale, j * hi * scale)


# --- probability of improvement --------------------------------------------------------------------------


def _poi_paired(a: np.ndarray) -> np.ndarray:
    return np.mean((a > 0) + 0.5 * (a == 0), axis=-1)


def _poi_unpaired(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    gt = (x[..., :, None] > y[..., None, :]).mean(axis=(-2, -1))
    eq = (x[..., :, None] == y[..., None, :]).mean(axis=(-2, -1))
    return gt + 0.5 * eq


@dataclass(frozen=True)
class Improvement:
    value: float
    ci_low: float
    ci_high: float


def probability_of_improvement(
    x: np.ndarray, y: np.ndarray, paired: bool, higher_is_better: bool, n_resamples: int = N_RESAMPLES
) -> Improvement:
    """P(the config beats the baseline), as in rliable: paired, the share of seeds on which it is better; unpaired,
    P(X > Y) over all pairs; ties count one half. 95% percentile bootstrap CI over seeds (each group on its own
    when unpaired). Values are compared on the permutation tests' integer grid, so float noise is no win."""
    nan = float("nan")
    if x.size == 0 or y.size == 0:
        return Improvement(nan, nan, nan)
    qx, qy = _quantize(x, y)
    sign = 1 if higher_is_better else -1
    qx, qy = sign * qx, sign * qy
    rng = np.random.default_rng(RNG_SEED)
    if paired:
        a = qx - qy
        value = float(_poi_paired(a))
        boot = _poi_paired(a[rng.integers(0, a.size, (n_resamples, a.size))])
    else:
        value = float(_poi_unpaired(qx, qy))
        # In chunks: each resample compares all nx * ny pairs, so bound the (chunk, nx, ny) arrays to ~4M cells.
        chunk = max(1, 4_000_000 // (qx.size * qy.size))
        parts = []
        for start in range(0, n_resamples, chunk):
            r = min(chunk, n_resamples - start)
            bx = qx[rng.integers(0, qx.size, (r, qx.size))]
            by = qy[rng.integers(0, qy.size, (r, qy.size))]
            parts.append(_poi_unpaired(bx, by))
        boot = np.concatenate(parts)
    lo, hi = np.percentile(boot, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    return Improvement(value, float(lo), float(hi))


# --- power -----------------------------------------------------------------------------------------------


def t_power(effect: float, n: float, alpha: float, paired: bool, n_other: float | None = None) -> float:
    """Power of the two-sided t-test (both rejection tails, as statsmodels computes it).

    paired: one-sample t on n differences, effect = d_z. Unpaired: two-sample t with n and n_other (default n)
    per group, effect = standardized mean difference."""
    if paired:
        df, ncp = n - 1, effect * math.sqrt(n)
    else:
        m = n if n_other is None else n_other
        df, ncp = n + m - 2, effect / math.sqrt(1 / n + 1 / m)
    if df < 1:
        return float("nan")
    crit = stats.t.isf(alpha / 2, df)
    ncp = abs(ncp)
    return float(1 - nct_cdf(crit, df, ncp) + nct_cdf(-crit, df, ncp))


def min_detectable_effect(
    n: float, alpha: float, paired: bool, n_other: float | None = None, power: float = POWER
) -> float:
    """The smallest standardized effect the design detects with `power` at two-sided level `alpha`."""
    if t_power(1.0, n, alpha, paired, n_other) != t_power(1.0, n, alpha, paired, n_other):  # nan: df < 1
        return float("nan")
    f = lambda e: t_power(e, n, alpha, paired, n_other) - power  # noqa: E731 - increasing in e
    hi = 1.0
    while f(hi) < 0:
        hi *= 2
        if hi > 1e6:
            return float("inf")
    return float(optimize.brentq(f, 0.0, hi, xtol=1e-10))


def seeds_needed(effect: float, alpha: float, paired: bool, power: float = POWER) -> int | None:
    """The fewest seeds (per group when unpaired) that detect `effect` with `power` at level `alpha`;
    None when not even MAX_SEEDS_NEEDED would (or the effect is 0 / undefined)."""
    if not np.isfinite(effect) or effect == 0:
        return None
    e = abs(effect)

    def ok(n: int) -> bool:
        return t_power(e, n, alpha, paired) >= power

    # Doubling, then bisection: power rises with n (and nct's tail is only evaluated near the answer).
    lo, hi = 2, 2
    while not ok(hi):
        lo, hi = hi + 1, hi * 2
        if hi > MAX_SEEDS_NEEDED:
            return None
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


# --- comparison ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """One group against the baseline; `diff` is mean over the compared values of group − baseline."""

    paired: bool
    test: str  # "paired_t", "welch", or "...(constant)" when the t-test is undefined
    n: int  # values compared: shared seeds (paired) or n_group (unpaired)
    n_base: int
    diff: float
    diff_ci_low: float
    diff_ci_high: float
    p_t: float
    p_permutation: float
    p_exact: bool  # the permutation p enumerated every assignment
    effect: Effect
    poi: Improvement
    mde: float  # smallest standardized effect detectable at 80% power at level alpha (alpha/m in the report)
    mde_units: float  # the same in metric units (times the sd of the differences / pooled sd)
    seeds_needed: int | None
    dropped_seeds: tuple[str, ...] = ()  # seeds of either side without a partner, left out of a paired test
    note: str = ""


def _pair(
    x: np.ndarray, seeds: Sequence[object], y: np.ndarray, base_seeds: Sequence[object]
) -> tuple[np.ndarray, np.ndarray, list[object]] | None:
    """Values of the seeds both groups ran (each once), in the group's order; None when seeds do not pair."""
    if None in seeds or None in base_seeds or len(set(seeds)) != len(seeds) or len(set(base_seeds)) != len(base_seeds):
        return None
    by_seed = dict(zip(base_seeds, y, strict=True))
    shared = [s for s in seeds if s in by_seed]
    if len(shared) < 2:
        return None
    xi = {s: v for s, v in zip(seeds, x, strict=True)}
    return np.array([xi[s] for s in shared]), np.array([by_seed[s] for s in shared]), shared


def compare(
    values: Sequence[float],
    seeds: Sequence[object],
    base_values: Sequence[float],
    base_seeds: Sequence[object],
    higher_is_better: bool = True,
    alpha_power: float = ALPHA,
) -> Comparison:
    """Compare a group with the baseline (values must be finite: the caller drops and counts NaNs).

    Paired (paired t + exact sign-flip permutation) on the seeds both ran, naming the seeds left without a
    partner; Welch's t and an independent permutation test only for genuinely unpaired designs (fewer than 2
    shared seeds, or no seed key). `alpha_power` is the level the power numbers use (the report passes α/m).
    """
    x = np.asarray(values, dtype=float)
    y = np.asarray(base_values, dtype=float)
    nan = float("nan")
    paired = _pair(x, seeds, y, base_seeds)
    if paired is not None:
        px, py, shared = paired
        dropped = tuple(
            sorted(
                {str(s) for s in seeds if s not in shared} | {str(s) for s in base_seeds if s not in shared},
                key=_natural,
            )
        )
        d = px - py
        n = d.size
        diff = float(np.mean(d))
        p_perm, exact = permutation_p_paired(d)
        poi = probability_of_improvement(px, py, True, higher_is_better)
        scale = max(1.0, float(np.max(np.abs(np.concatenate([px, py])))))
        mde = min_detectable_effect(n, alpha_power, True)
        if is_constant(d, scale):
            # t is undefined (sd 0); the exact sign-flip p is all the data can say.
            return Comparison(
                True,
                "paired_t (constant)",
                n,
                n,
                diff,
                diff,
                diff,
                nan,
                signflip_p_constant(d),
                True,
                Effect("d_z", nan, nan, nan),
                poi,
                mde,
                0.0,
                None,
                dropped,
                "the differences are constant: the t-test is undefined; p is the exact sign-flip p",
            )
        res = stats.ttest_rel(px, py)
        ci = res.confidence_interval(CONFIDENCE)
        eff = cohens_dz(d)
        sd = float(np.std(d, ddof=1))
        return Comparison(
            True,
            "paired_t",
            n,
            n,
            diff,
            float(ci.low),
            float(ci.high),
            float(res.pvalue),
            p_perm,
            exact,
            eff,
            poi,
            mde,
            mde * sd,
            seeds_needed(eff.value, alpha_power, True),
            dropped,
        )
    diff = float(np.mean(x) - np.mean(y)) if x.size and y.size else nan
    poi = probability_of_improvement(x, y, False, higher_is_better)
    mde = min_detectable_effect(x.size, alpha_power, False, y.size) if x.size + y.size > 2 else nan
    if x.size < 2 or y.size < 2:
        p_perm, exact = permutation_p_independent(x, y) if x.size + y.size > 2 else (nan, False)
        return Comparison(
            False,
            "welch",
            x.size,
            y.size,
            diff,
            nan,
            nan,
            nan,
            p_perm,
            exact,
            hedges_g(x, y),
            poi,
            mde,
            nan,
            None,
            note="fewer than 2 values on one side: no t-test",
        )
    p_perm, exact = permutation_p_independent(x, y)
    eff = hedges_g(x, y)
    sp = math.sqrt(((x.size - 1) * np.var(x, ddof=1) + (y.size - 1) * np.var(y, ddof=1)) / (x.size + y.size - 2))
    scale = max(1.0, float(np.max(np.abs(np.concatenate([x, y])))))
    if is_constant(x, scale) and is_constant(y, scale):
        return Comparison(
            False,
            "welch (constant)",
            x.size,
            y.size,
            diff,
            diff,
            diff,
            nan,
            p_perm,
            exact,
            eff,
            poi,
            mde,
            0.0,
            None,
            note="both groups are constant: the t-test is undefined",
        )
    res = stats.ttest_ind(x, y, equal_var=False)
    ci = res.confidence_interval(CONFIDENCE)
    return Comparison(
        False,
        "welch",
        x.size,
        y.size,
        diff,
        float(ci.low),
        float(ci.high),
        float(res.pvalue),
        p_perm,
        exact,
        eff,
        poi,
        mde,
        mde * sp,
        seeds_needed(eff.value, alpha_power, False),
    )


def _natural(s: str) -> list[object]:
    import re

    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", s) if t]


def holm(pvalues: Sequence[float], m: int | None = None) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values over a family of `m` comparisons (default: every entry, NaN included).

    A comparison whose p is NaN still belongs to the family (it was shown): it counts as a p of 1, which Holm
    ranks last, and its adjusted p stays NaN. Same numbers as statsmodels' multipletests(method='holm') with the
    NaNs set to 1.
    """
    p = np.asarray(pvalues, dtype=float)
    m = p.size if m is None else m
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = p[order] * (m - np.arange(order.size))
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


def expected_max_unbiased(scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Expected best score (and std) of n = 1..N configurations drawn *without* replacement from the N tried: the
    unbiased estimator (Tang et al. 2020, "Showing Your Work Doesn't Always Work"). It is the mean of the max over
    all C(N, n) subsets: P(max = v_(i)) = C(i-1, n-1) / C(N, n); at n = N it is the observed max."""
    v = np.sort(np.asarray(scores, dtype=float))
    big_n = v.size
    means, stds = np.empty(big_n), np.empty(big_n)
    for n in range(1, big_n + 1):
        w = np.array([math.comb(i - 1, n - 1) for i in range(1, big_n + 1)], dtype=float) / math.comb(big_n, n)
        means[n - 1] = w @ v
        stds[n - 1] = math.sqrt(max(0.0, w @ v**2 - means[n - 1] ** 2))
    return means, stds


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
    y_true: np.ndarray,
    preds_a: Sequence[np.ndarray],
    preds_b: Sequence[np.ndarray],
    n_classes: int,
    n_resamples: int = N_RESAMPLES,
) -> PairedBootstrap:
    """Paired bootstrap over test examples (only) of macro-F1(A) - macro-F1(B).

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
        (full,),
        statistic,
        vectorized=True,
        n_resamples=n_resamples,
        batch=500,
        confidence_level=CONFIDENCE,
        method="BCa",
        rng=RNG_SEED,
    )
    dist = np.asarray(res.bootstrap_distribution)
    extreme = np.count_nonzero(np.abs(dist - diff) >= abs(diff) - 1e-12)
    pvalue = float((extreme + 1) / (dist.size + 1))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return PairedBootstrap(n, len(pa), f1_a, f1_b, diff, low, high, pvalue, n_resamples)


@dataclass(frozen=True)
class TwoLevelBootstrap:
    n_examples: int
    n_pairs: int
    diff: float
    ci_low: float
    ci_high: float
    std: float
    n_resamples: int


def two_level_bootstrap(
    score: Callable[[np.ndarray, np.ndarray], np.ndarray],
    preds_a: Sequence[np.ndarray],
    preds_b: Sequence[np.ndarray],
    n_examples: int,
    n_resamples: int = 2000,
    batch: int = 250,
) -> TwoLevelBootstrap:
    """Bootstrap over seeds *and* test examples (Bouthillier et al. 2021) of mean over pairs of
    score(A) - score(B), so the CI holds both sources of variance.

    Each resample draws the seed pairs with replacement and, independently, one set of example indices shared by
    every pair (the examples are paired too). `score(pred, idx)` returns the metric of one run's predictions on
    each row of `idx` (shape (R, n_examples)). 95% percentile interval.
    """
    k = len(preds_a)
    rng = np.random.default_rng(RNG_SEED)
    full = np.arange(n_examples)[None, :]
    diff = float(np.mean([score(a, full)[0] - score(b, full)[0] for a, b in zip(preds_a, preds_b, strict=True)]))
    dist = []
    for start in range(0, n_resamples, batch):
        r = min(batch, n_resamples - start)
        ex = rng.integers(0, n_examples, (r, n_examples))
        seeds = rng.integers(0, k, (r, k))
        per_pair = np.stack([score(a, ex) - score(b, ex) for a, b in zip(preds_a, preds_b, strict=True)])  # (k, r)
        dist.append(per_pair[seeds.T, np.arange(r)].mean(axis=0))
    d = np.concatenate(dist)
    lo, hi = np.percentile(d, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    return TwoLevelBootstrap(n_examples, k, diff, float(lo), float(hi), float(np.std(d)), n_resamples)
