"""PNG plots of a report result (matplotlib's Agg through Figure: the caller's backend and figures stay alone)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

GROUPS_PNG = "report_groups.png"
FOREST_PNG = "report_forest.png"
EXPMAX_PNG = "report_expected_max.png"
CURVES_PNG = "report_learning_curves.png"
HPARAM_PNG = "report_hparam.png"
STAGE1_PNG = "report_stage1.png"
PROFILE_PNG = "report_profile.png"


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


def groups_plot(result: dict[str, Any], path: Path) -> None:
    """Every seed as a dot beside the group's mean ± 95% CI, with n and failures in the label."""
    from matplotlib.figure import Figure

    rows = result["groups"]
    fig = Figure(figsize=(9, 0.55 * len(rows) + 1.6))
    ax = fig.subplots()
    y = np.arange(len(rows))
    for i, r in enumerate(rows):
        pts = [p["value"] for p in result["seed_values"].get(r["group"], [])]
        jitter = np.linspace(-0.15, 0.15, len(pts)) if len(pts) > 1 else np.zeros(len(pts))
        ax.scatter(
            pts, i + 0.18 + jitter * 0.5, s=14, color="tab:gray", alpha=0.8, zorder=2, label="seeds" if i == 0 else None
        )
        mean, lo, hi = _nan(r["mean"]), _nan(r["ci95_low"]), _nan(r["ci95_high"])
        err = [[max(0.0, mean - lo)], [max(0.0, hi - mean)]] if np.isfinite(lo) else None
        ax.errorbar(
            [mean],
            [i],
            xerr=err,
            fmt="o",
            color="tab:blue",
            capsize=4,
            zorder=3,
            label="mean ± 95% CI" if i == 0 else None,
        )
    labels = [
        f"{r['group'] or '(all)'}  n={r['n']}"
        + (f", {r['n_failed']} failed" if r["n_failed"] else "")
        + (f", {r['n_nan']} NaN" if r["n_nan"] else "")
        for r in rows
    ]
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    sel = result["selection"]["group"]
    for label, r in zip(ax.get_yticklabels(), rows, strict=True):
        if r["group"] == sel:
            label.set_fontweight("bold")
    if result["baseline"]:
        base = next(r for r in rows if r["group"] == result["baseline"])
        ax.axvline(_nan(base["mean"]), color="gray", linestyle="--", linewidth=1, label="baseline mean")
    ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(f"{result['metric']} (seeds, mean, 95% CI)")
    ax.set_title(f"{result['metric']} per group (bold: selected on {result['select']})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def forest_plot(result: dict[str, Any], path: Path) -> bool:
    """Difference vs the baseline with its 95% CI per group: the plot that answers the question."""
    from matplotlib.figure import Figure

    rows = [r for r in result["groups"] if r["group"] in result["comparisons"]]
    if not rows:
        return False
    fig = Figure(figsize=(9, 0.55 * len(rows) + 1.6))
    ax = fig.subplots()
    for i, r in enumerate(rows):
        d, lo, hi = _nan(r["diff"]), _nan(r["diff_ci95_low"]), _nan(r["diff_ci95_high"])
        err = [[max(0.0, d - lo)], [max(0.0, hi - d)]] if np.isfinite(lo) else None
        ax.errorbar(
            [d],
            [i],
            xerr=err,
            fmt="s",
            color="tab:red" if np.isfinite(lo) and (lo > 0 or hi < 0) else "tab:blue",
            capsize=4,
        )
    ax.axvline(0, color="black", linewidth=1)
    ax.set_yticks(
        range(len(rows)),
        [f"{r['group']}  p_holm={r['p_holm']:.3g}" if r["p_holm"] == r["p_holm"] else r["group"] for r in rows],
    )
    ax.invert_yaxis()
    ax.set_xlabel(f"{result['metric']}: group − baseline (95% CI)")
    ax.set_title(f"Difference vs baseline {result['baseline']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def expected_max_plot(em: dict[str, Any], path: Path) -> None:
    """Both estimators; the std band is drawn as it is (not clipped to the observed range)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    n = np.array(em["n"])
    for key, std, label in (
        ("expected", "std", "with replacement (Dodge et al. 2019)"),
        ("expected_unbiased", "std_unbiased", "without replacement, unbiased (Tang et al. 2020)"),
    ):
        e, s = np.array(em[key]), np.array(em[std])
        (line,) = ax.plot(n, e, marker="o", label=label)
        ax.fill_between(n, e - s, e + s, alpha=0.15, color=line.get_color())
    best = em["observed_max"] if em["mode"] == "max" else em["observed_min"]
    ax.axhline(best, color="gray", linestyle="--", linewidth=1, label="best observed")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="best", fontsize=7)
    budget = f" (× {em['runs_per_config']:.3g} runs"
    budget += f", {em['hours_per_config']:.3g} h" if em.get("hours_per_config") else ""
    ax.set_xlabel("configurations tried" + budget + " each)")
    ax.set_ylabel(f"expected {'best' if em['mode'] == 'max' else 'lowest'} {em['metric']}")
    ax.set_title("Expected validation performance (band: ± std)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def curves_plot(curves: dict[str, Any], metric: str, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    for name, c in curves.items():
        (line,) = ax.plot(c["x"], c["mean"], label=f"{name} (n={c['n_seeds']})")
        ax.fill_between(c["x"], c["low"], c["high"], alpha=0.15, color=line.get_color())
    x_name = next(iter(curves.values()))["x_name"]
    ax.set_xlabel(x_name + (" trained (curves.csv)" if x_name == "tokens" else ""))
    ax.set_ylabel(metric)
    ax.set_title(f"Learning curves: {metric} (mean, band = min..max over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def hparam_plot(hp: dict[str, Any], metric: str, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    series: dict[str, list[dict[str, Any]]] = {}
    for p in hp["points"]:
        series.setdefault(p.get("series", ""), []).append(p)
    for label, pts in series.items():
        pts = sorted(pts, key=lambda p: p["x"])
        x = np.array([p["x"] for p in pts])
        m = np.array([_nan(p["mean"]) for p in pts])
        lo = np.array([_nan(p["low"]) for p in pts])
        hi = np.array([_nan(p["high"]) for p in pts])
        err = np.vstack([np.nan_to_num(m - lo), np.nan_to_num(hi - m)]).clip(min=0)
        ax.errorbar(x, m, yerr=err, fmt="o-", capsize=4, label=label or None)
    if any(series):
        ax.legend(fontsize=7)
    if hp["log"]:
        ax.set_xscale("log")
    ax.set_xlabel(hp["key"] + (" (log)" if hp["log"] else ""))
    ax.set_ylabel(f"{metric} (mean, 95% CI)")
    ax.set_title(f"{metric} vs {hp['key']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def stage1_plot(c: dict[str, Any], path: Path) -> None:
    """Per arm: the stage-1 mean of the selection metric against its swept hyperparameter; a star on the choice.
    One panel per swept key (arms usually share one, e.g. optimizer.lr)."""
    from matplotlib.figure import Figure

    keys = list(dict.fromkeys(curve["key"] for curve in c["stage1_curves"]))
    fig = Figure(figsize=(6.5 * len(keys), 4.2))
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys, strict=True):
        log = False
        for curve in (cv for cv in c["stage1_curves"] if cv["key"] == key):
            log = log or curve["log"]
            series: dict[str, list[dict[str, Any]]] = {}
            for p in curve["points"]:
                series.setdefault(p["series"], []).append(p)
            for label, pts in series.items():
                pts = sorted((p for p in pts if p["mean"] is not None and p["x"] is not None), key=lambda p: p["x"])
                if not pts:
                    continue
                name = curve["arm"] + (f" ({label})" if label else "")
                (line,) = ax.plot([p["x"] for p in pts], [p["mean"] for p in pts], "o-", label=name)
                chosen = [p for p in pts if p["chosen"]]
                ax.plot([p["x"] for p in chosen], [p["mean"] for p in chosen], "*", ms=16, color=line.get_color())
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(key + (" (log)" if log else ""))
        ax.set_ylabel(f"{c['optimized_metric']} (mean over tune seeds)")
        ax.set_title(f"Stage 1: {c['optimized_metric']} vs {key} (★ = choice)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def profile_plot(p: dict[str, Any], path: Path) -> None:
    """ρ(τ) per arm as a step curve from τ = 1 to a little past the largest finite ratio (at least 2)."""
    from matplotlib.figure import Figure

    from lmlab.report.compare import rho_at

    finite = [r for a in p["arms"] for r in p["ratios"][a].values() if r is not None]
    tau_max = max([2.0, *finite]) * 1.05
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    for a in p["arms"]:
        ratios = list(p["ratios"][a].values())
        xs = sorted({1.0, tau_max, *(r for r in ratios if r is not None and r <= tau_max)})
        ax.step(xs, [rho_at(ratios, x) for x in xs], where="post", label=a)
    ax.set_xlim(1.0, tau_max)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("τ (tokens-to-target ÷ the best arm's on that workload)")
    ax.set_ylabel("ρ(τ): fraction of workloads")
    ax.set_title(f"Performance profiles over {len(p['workloads'])} workloads")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def write_plots(result: dict[str, Any], out: Path) -> list[str]:
    written = []
    groups_plot(result, out / GROUPS_PNG)
    written.append(GROUPS_PNG)
    if result["baseline"] and forest_plot(result, out / FOREST_PNG):
        written.append(FOREST_PNG)
    if result["expected_max"]:
        expected_max_plot(result["expected_max"], out / EXPMAX_PNG)
        written.append(EXPMAX_PNG)
    if result.get("curves"):
        curves_plot(result["curves"], result["select"], out / CURVES_PNG)
        written.append(CURVES_PNG)
    hp = result.get("hparam")
    if hp and len(hp["points"]) >= 2:
        hparam_plot(hp, hp.get("metric", result["select"]), out / HPARAM_PNG)
        written.append(HPARAM_PNG)
    c = result.get("compare")
    if c and c.get("stage1_curves"):
        stage1_plot(c, out / STAGE1_PNG)
        written.append(STAGE1_PNG)
    return written
