"""`lmlab-report <sweep>` on a compare sweep (experiment=compare_optimizers; it holds compare.json).

The comparison uses stage 2 only (`confirm/`: each arm's choice on fresh seeds; the tuning runs chose the
configurations, so reusing them would be the winner's curse): the usual table, the baseline being the
`compare.baseline` arm, paired by confirm seed. Added here: per arm the chosen configuration, its stage-1 scores and
an edge-of-grid warning, and tokens-to-target from each confirm run's curves.csv:

- target: the worst (highest) final val/loss among the baseline's confirm seeds, or `--target`;
- T (per run): the tokens at the first evaluation at or below the target, linearly interpolated from the
  evaluation before it (the first evaluation itself when it is already at or below);
- speedup (per arm, paired by seed): the geometric mean of T_baseline / T_arm with a Student-t 95% interval on the
  log-ratios; when a run never reaches the target (T > its budget) the speedup is a bound (its budget in place of
  T) without an interval;
- stage-1 curves: per arm, the stage-1 trial means of `optimized_metric` (the numbers the choice was made on, from
  compare.json) against the arm's swept hyperparameter, the chosen point marked;
- performance profiles (several compare sweeps given together, one workload each, e.g. two model sizes): an arm's
  tokens-to-target on a workload is the median over its confirm seeds (a seed that never reaches the target counts
  as ∞; AlgoPerf likewise takes the median over its studies); r = T_arm / T_best on that workload (∞ when
  unreached); ρ_arm(τ) = the fraction of workloads with r ≤ τ (Dolan & Moré 2002, as AlgoPerf scores).
"""

from __future__ import annotations

import csv
import json
import math
import os
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from lmlab.report import html
from lmlab.report.collect import ReportError
from lmlab.report.html import fmt
from lmlab.rundir.files import CURVES

COMPARE = "compare.json"
CONFIRM = "confirm"
TARGET_METRIC = "val/loss"
STEP_TIME = "perf/train_step_time_s"  # the Throughput callback's mean optimizer-step wall time (after warm-up)
TAUS = (1.0, 1.1, 1.25, 1.5, 2.0)  # where the report tabulates ρ(τ); the plot draws the whole step curve


def read(sweep_dir: Path) -> dict[str, Any] | None:
    """The sweep's compare.json, or None when it is not a compare sweep."""
    import json

    path = Path(sweep_dir) / COMPARE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if "confirm" not in record:
        raise ReportError(
            f"{path}: stage 1 has not chosen a configuration for every arm"
            + (f" ({record['error']})" if record.get("error") else "")
            + "; there is no fresh-seed comparison to report. Re-issue the sweep's command to finish it."
        )
    return record


def configure(args: Any, record: dict[str, Any]) -> None:
    """Point the report at stage 2: confirm/ is the sweep, the baseline arm's choice the baseline."""
    sweep = Path(args.sweep_dir[0])
    args.out = args.out or sweep
    args.sweep_dir = [sweep / CONFIRM]
    if not args.baseline:
        entry = next(e for e in record["confirm"] if e["arm"] == record["baseline"])
        args.baseline = " ".join(entry["overrides"])


def tokens_to_target(rows: list[tuple[float, float]], target: float) -> float | None:
    """Tokens at which (tokens, value) evaluations first reach `target` (value <= target), linearly interpolated
    from the evaluation before; None if never."""
    previous: tuple[float, float] | None = None
    for tokens, value in sorted(rows):
        if value <= target:
            if previous is None or previous[1] == value:
                return tokens
            t0, v0 = previous
            return t0 + (tokens - t0) * (v0 - target) / (v0 - value)
        previous = (tokens, value)
    return None


def read_curve(run_dir: Path, metric: str = TARGET_METRIC) -> list[tuple[float, float]]:
    path = Path(run_dir) / CURVES
    if not path.is_file():
        return []
    with path.open() as f:
        return [(float(r["tokens"]), float(r[metric])) for r in csv.DictReader(f) if r.get(metric) not in (None, "")]


def geo_mean_ci(logs: np.ndarray) -> tuple[float, float, float]:
    """exp(mean) of log-ratios and the 95 % Student-t interval on them, mapped back (nan bounds below 2 values)."""
    geo = float(np.exp(logs.mean()))
    if len(logs) < 2:
        return geo, float("nan"), float("nan")
    half = float(sps.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / math.sqrt(len(logs)))
    return geo, float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))


def step_time_ratio(base: dict[Any, float], arm: dict[Any, float]) -> dict[str, Any] | None:
    """An arm's optimizer-step wall time against the baseline arm's (perf/train_step_time_s of the confirm runs,
    which ran interleaved on the same machine), paired by seed: the geometric mean of arm / baseline with a
    t-interval on the log-ratios. Above 1: the arm's steps are slower (a tokens-to-target speedup of s is then a
    wall-clock speedup of about s / ratio)."""
    seeds = [s for s in base if s in arm and base[s] and arm[s]]
    if not seeds:
        return None
    logs = np.log(np.array([arm[s] for s in seeds], dtype=float) / np.array([base[s] for s in seeds], dtype=float))
    ratio, low, high = geo_mean_ci(logs)
    ms = 1000 * float(np.mean([arm[s] for s in seeds]))
    return {"n": len(seeds), "ratio": ratio, "ms": ms, "ci95_low": low, "ci95_high": high}


def speedup(base: dict[Any, float | None], arm: dict[Any, float | None], budgets: dict[Any, float]) -> dict[str, Any]:
    """Geometric mean of T_base / T_arm over the seeds both have, a t-interval on the log-ratios; a bound when a
    run did not reach the target (`budgets`: its tokens trained, standing in for T)."""
    seeds = [s for s in base if s in arm]
    if not seeds:
        return {"n": 0, "speedup": None, "kind": "none"}
    arm_miss = [s for s in seeds if arm[s] is None]
    base_miss = [s for s in seeds if base[s] is None]
    t_base = [base[s] if base[s] is not None else budgets[("base", s)] for s in seeds]
    t_arm = [arm[s] if arm[s] is not None else budgets[("arm", s)] for s in seeds]
    logs = np.log(np.array(t_base, dtype=float) / np.array(t_arm, dtype=float))
    geo, low, high = geo_mean_ci(logs)
    out: dict[str, Any] = {"n": len(seeds), "seeds": seeds, "t_base": t_base, "t_arm": t_arm, "speedup": geo}
    if arm_miss and base_miss:
        return {**out, "speedup": None, "kind": "unreached", "unreached": {"arm": arm_miss, "baseline": base_miss}}
    if arm_miss:  # T_arm > its budget: the true ratio is smaller
        return {**out, "kind": "upper_bound", "unreached": {"arm": arm_miss}}
    if base_miss:
        return {**out, "kind": "lower_bound", "unreached": {"baseline": base_miss}}
    return {**out, "kind": "estimate", "ci95_low": low, "ci95_high": high}


def edge_warning(arm: str, entry: dict[str, Any], search: str = "grid") -> str | None:
    """The choice at the first or last value of a swept key (grid) or of the values Optuna tried: the optimum may
    lie outside them."""
    choice = entry.get("choice") or {}
    chosen = dict(o.split("=", 1) for o in choice.get("overrides", []))
    edges = []
    for key, values in (entry.get("space") or {}).items():
        if len(values) >= 2 and key in chosen and chosen[key] in (values[0], values[-1]):
            edges.append(
                f"{key}={chosen[key]} is the {'lowest' if chosen[key] == values[0] else 'highest'} of {values}"
            )
    if not edges:
        return None
    if search == "optuna":
        return (
            f"arm {arm}: the choice is at the edge of the values its Optuna trials tried ({'; '.join(edges)}): "
            f"widen the range or give it more trials"
        )
    return f"arm {arm}: the choice sits at the edge of its grid ({'; '.join(edges)}): extend the grid"


def _number(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def stage1_curves(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Per arm: its stage-1 trials' mean `optimized_metric` over the tune seeds (what the choice was made on)
    against the first key of its space with several numeric values (e.g. optimizer.lr), one series per setting of
    the arm's other swept keys; failed trials have no point; the chosen trial is marked."""
    out = []
    for arm, entry in record["arms"].items():
        space = entry.get("space") or {}
        key = next(
            (k for k, vals in space.items() if len(vals) >= 2 and all(_number(v) is not None for v in vals)), None
        )
        if key is None:
            continue
        chosen = (entry.get("choice") or {}).get("index")
        points = []
        for i, trial in enumerate(entry["trials"]):
            setting = dict(o.split("=", 1) for o in trial["overrides"])
            points.append(
                {
                    "x": _number(setting.get(key)),
                    "mean": None if trial["failed"] else trial["mean"],
                    "series": " ".join(o for o in trial["overrides"] if o.split("=", 1)[0] != key),
                    "chosen": i == chosen,
                }
            )
        xs = [p["x"] for p in points if p["x"] is not None]
        if not xs:
            continue
        log = any(w in key for w in ("lr", "weight_decay")) or (min(xs) > 0 and max(xs) / min(xs) >= 10)
        out.append({"arm": arm, "key": key, "log": bool(log and min(xs) > 0), "points": points})
    return out


def section(record: dict[str, Any], sweep_dir: Path, target: float | None) -> dict[str, Any]:
    """Per arm: choice, stage-1 scores, edge warning, tokens-to-target and speedup vs the baseline arm."""
    sweep_dir = Path(sweep_dir)
    base_arm = record["baseline"]
    runs: dict[str, dict[Any, list[tuple[float, float]]]] = {}
    for entry in record["confirm"]:
        curve = read_curve(sweep_dir / entry["dir"])
        if curve:
            runs.setdefault(entry["arm"], {})[entry["seed"]] = curve
    base_runs = runs.get(base_arm, {})
    step_times: dict[str, dict[Any, float]] = {}  # arm -> seed -> perf/train_step_time_s
    for entry in record["confirm"]:
        metrics_file = sweep_dir / entry["dir"] / "metrics.json"
        value = json.loads(metrics_file.read_text()).get(STEP_TIME) if metrics_file.is_file() else None
        if isinstance(value, (int, float)) and value > 0:
            step_times.setdefault(entry["arm"], {})[entry["seed"]] = float(value)
    if target is None and base_runs:
        target = max(curve[-1][1] for curve in base_runs.values())  # the worst final val/loss of the baseline
        target_rule = f"the worst final {TARGET_METRIC} among the baseline ({base_arm}) confirm seeds"
    else:
        target_rule = "--target"
    arms: dict[str, Any] = {}
    for arm, entry in record["arms"].items():
        info: dict[str, Any] = {
            "choice": (entry.get("choice") or {}).get("overrides"),
            "overrides": entry.get("overrides"),
            "stage1": [
                {"overrides": t["overrides"], "mean": t["mean"], "failed": t["failed"]} for t in entry["trials"]
            ],
            "edge_warning": edge_warning(arm, entry, record.get("search", "grid")),
            "step_time": step_time_ratio(step_times.get(base_arm, {}), step_times.get(arm, {})),
        }
        if target is not None:
            t = {seed: tokens_to_target(curve, target) for seed, curve in runs.get(arm, {}).items()}
            info["tokens_to_target"] = t
            if arm != base_arm:
                tb = {seed: tokens_to_target(curve, target) for seed, curve in base_runs.items()}
                budgets = {("base", s): c[-1][0] for s, c in base_runs.items()}
                budgets.update({("arm", s): c[-1][0] for s, c in runs.get(arm, {}).items()})
                info["speedup"] = speedup(tb, t, budgets)
        arms[arm] = info
    return {
        "baseline": base_arm,
        "target": target,
        "target_rule": target_rule,
        "target_metric": TARGET_METRIC,
        "tune_seeds": record["tune_seeds"],
        "confirm_seeds": record["confirm_seeds"],
        "optimized_metric": record.get("optimized_metric"),
        "arms": arms,
        "stage1_curves": stage1_curves(record),
        "warnings": [w for a in arms.values() if (w := a["edge_warning"])],
    }


# ---- performance profiles over several workloads (several compare sweeps)
def workload_tokens(per_seed: dict[Any, float | None]) -> float:
    """An arm's tokens-to-target on one workload: the median over its confirm seeds, a seed that never reached the
    target counting as ∞ (so the median is ∞ when half or more did not); ∞ without any seed."""
    values = [math.inf if v is None else float(v) for v in per_seed.values()]
    return float(np.median(values)) if values else math.inf


def profiles(tokens: dict[str, dict[str, float]], taus: tuple[float, ...] = TAUS) -> dict[str, Any]:
    """`tokens[workload][arm]` (∞: unreached) -> per arm the ratio to the workload's best arm (∞ when unreached, or
    when no arm reached the target there) and ρ(τ) = the fraction of workloads whose ratio is ≤ τ. An arm missing
    from a workload counts as unreached there."""

    def finite(v: float) -> float | None:  # JSON has no ∞: None = unreached
        return v if math.isfinite(v) else None

    workloads = list(tokens)
    arms = list(dict.fromkeys(a for w in workloads for a in tokens[w]))
    ratios: dict[str, dict[str, float | None]] = {a: {} for a in arms}
    for w in workloads:
        best = min(tokens[w].values(), default=math.inf)
        for a in arms:
            ratios[a][w] = finite(tokens[w].get(a, math.inf) / best) if math.isfinite(best) else None
    return {
        "workloads": workloads,
        "arms": arms,
        "taus": list(taus),
        "rho": {a: [rho_at(list(ratios[a].values()), tau) for tau in taus] for a in arms},
        "tokens": {w: {a: finite(tokens[w].get(a, math.inf)) for a in arms} for w in workloads},
        "ratios": ratios,
        "missing": [f"{a} (not in {w})" for w in workloads for a in arms if a not in tokens[w]],
    }


def rho_at(ratios: list[float | None], tau: float) -> float:
    """ρ(τ): the fraction of an arm's per-workload ratios (None: unreached, never counted) that are ≤ τ."""
    return sum(r is not None and r <= tau for r in ratios) / len(ratios)


PROFILE_RULE = (
    "An arm's tokens-to-target on a workload is the median over its confirm seeds (a seed that never reaches the "
    "workload's target counts as ∞, as does a missing arm); r = T_arm / T_best on that workload (∞ when unreached); "
    "ρ(τ) = the fraction of workloads with r ≤ τ (a performance profile, Dolan & Moré 2002, as AlgoPerf scores). "
    "ρ(1) is the share of workloads an arm is fastest on; a curve that reaches 1 sooner is better."
)


def profile_rows(p: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The ρ(τ) table and the tokens-to-target table (T and r per workload), for report.md and report.html."""
    rho = [{"arm": a, **{f"ρ({fmt(t)})": v for t, v in zip(p["taus"], p["rho"][a], strict=True)}} for a in p["arms"]]
    tokens = [
        {
            "arm": a,
            **{
                w: "> budget (∞)" if (t := p["tokens"][w][a]) is None else f"{t:.0f} (r = {fmt(p['ratios'][a][w])})"
                for w in p["workloads"]
            },
        }
        for a in p["arms"]
    ]
    return rho, tokens


def _md(rows: list[dict[str, Any]]) -> list[str]:
    cols = list(rows[0])
    return [
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
        *("| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows),
    ]


def profile_markdown(p: dict[str, Any]) -> list[str]:
    rho, tokens = profile_rows(p)
    lines = [f"## Performance profiles ({len(p['workloads'])} workloads)", "", PROFILE_RULE, "", *_md(rho), ""]
    lines += ["Tokens to target (median over confirm seeds) and r = T / T_best per workload:", "", *_md(tokens)]
    if p["missing"]:
        lines += ["", f"- arms missing from a workload count as unreached there: {', '.join(p['missing'])}"]
    return [*lines, ""]


def _speedup_text(s: dict[str, Any] | None) -> str:
    if not s or s.get("speedup") is None:
        return "n/a" if not s or s.get("kind") != "unreached" else "> budget (neither reached the target)"
    if s["kind"] == "upper_bound":
        return f"≤ {fmt(s['speedup'])}× (> budget on seed(s) {s['unreached']['arm']}; a bound, no CI)"
    if s["kind"] == "lower_bound":
        return f"≥ {fmt(s['speedup'])}× (baseline > budget on seed(s) {s['unreached']['baseline']}; a bound, no CI)"
    ci = "" if math.isnan(s.get("ci95_low", float("nan"))) else f" [{fmt(s['ci95_low'])}, {fmt(s['ci95_high'])}]"
    return f"{fmt(s['speedup'])}×{ci} (n={s['n']})"


def _step_time_text(s: dict[str, Any] | None, baseline: bool) -> str:
    if not s:
        return "n/a"
    if baseline:
        return f"{s['ms']:.0f} ms/step (baseline)"
    ci = "" if math.isnan(s["ci95_low"]) else f" [{fmt(s['ci95_low'])}, {fmt(s['ci95_high'])}]"
    return f"{fmt(s['ratio'])}×{ci} ({s['ms']:.0f} ms/step, n={s['n']})"


def rows(c: dict[str, Any]) -> list[dict[str, str]]:
    """One row per arm, for report.md and report.html alike."""
    out = []
    for arm, a in c["arms"].items():
        out.append(
            {
                "arm": arm,
                "choice": " ".join(a["choice"] or []),
                "stage-1 scores (grid order)": ", ".join(
                    f"{' '.join(t['overrides'])}: {'failed' if t['failed'] else fmt(t['mean'])}" for t in a["stage1"]
                ),
                "tokens to target (per seed)": ", ".join(
                    f"{s}: {'> budget' if v is None else f'{v:.0f}'}"
                    for s, v in (a.get("tokens_to_target") or {}).items()
                ),
                "speedup vs baseline": "(baseline)" if arm == c["baseline"] else _speedup_text(a.get("speedup")),
                "step time vs baseline": _step_time_text(a.get("step_time"), arm == c["baseline"]),
            }
        )
    return out


def intro(c: dict[str, Any]) -> list[str]:
    """The protocol's two sentences (markdown; the HTML escapes and strips the backticks)."""
    return [
        (
            f"Each arm's configuration was chosen on stage 1 (tune seeds {c['tune_seeds']}, best mean "
            f"{c['optimized_metric']}); **the comparison above uses stage 2 only** (confirm seeds "
            f"{c['confirm_seeds']}, shared by every arm: paired by seed, baseline arm `{c['baseline']}`)."
        ),
        f"Tokens-to-target: target {c['target_metric']} = {fmt(c['target'])} ({c['target_rule']}); the first "
        "evaluation at or below it, linearly interpolated in tokens; speedup = geometric mean of T_baseline / T_arm "
        "over seeds, 95% t-interval on the log-ratios. Step time: perf/train_step_time_s of the confirm runs "
        "(interleaved), arm / baseline paired by seed, geometric mean and 95% t-interval.",
    ]


def markdown(c: dict[str, Any]) -> list[str]:
    first, second = intro(c)
    table = rows(c)
    cols = list(table[0]) if table else []
    lines = [
        "## Optimizer comparison (compare.json)",
        "",
        first,
        "",
        second,
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in table:
        lines.append("| " + " | ".join(f"`{r[k]}`" if k == "choice" else r[k] for k in cols) + " |")
    lines.append("")
    lines += [f"- **{w}**" for w in c["warnings"]]
    return [*lines, ""]


def html_section(c: dict[str, Any], table_id: str = "compare") -> list[str]:
    """A compare sweep's arms (choice, stage-1 scores, tokens-to-target, speedup) and edge-of-grid warnings."""
    table_rows = rows(c)
    return [
        "<h2>Optimizer comparison (compare.json)</h2>",
        *(f"<p>{html.md_text(t)}</p>" for t in intro(c)),
        html.table(table_rows, list(table_rows[0]), table_id),
        *(f'<p class="warn">{escape(w)}</p>' for w in c["warnings"]),
    ]


def render_profiles(result: dict[str, Any], out: Path) -> str:
    """report.html of several compare sweeps: the performance profiles (table and step curves) and, per workload,
    its arms and a link to its own report."""
    e = escape
    p = result["profile"]
    rho_rows, token_rows = profile_rows(p)
    parts = [
        f"<h1>Performance profiles: {len(p['workloads'])} workloads</h1>",
        f"<p>{e(PROFILE_RULE)}</p>",
        html.table(rho_rows, list(rho_rows[0]), "profile"),
        "<h2>Tokens to target (median over confirm seeds) and r = T / T_best</h2>",
        html.table(token_rows, list(token_rows[0]), "profile_tokens"),
        *(f'<p class="warn">arms missing from a workload count as unreached there: {e(m)}</p>' for m in p["missing"]),
    ]
    if result["plots"]:
        parts += ["<h2>Plots</h2>"] + [html.image(out, name) for name in result["plots"]]
    for i, (w, d) in enumerate(result["workloads"].items()):
        link = os.path.relpath(Path(d) / "report.html", out)
        parts += [f'<h2>Workload {e(w)} (<a href="{e(link)}">its report</a>)</h2>']
        parts += html_section(result["compare"][w], f"compare{i}")[1:]  # its own heading above
    return html.page(result["sweep_dir"], parts)
