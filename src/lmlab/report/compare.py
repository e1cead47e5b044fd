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
  T) without an interval.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from lmlab.report.collect import ReportError
from lmlab.report.html import fmt

COMPARE = "compare.json"
CURVES = "curves.csv"
CONFIRM = "confirm"
TARGET_METRIC = "val/loss"


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
    geo = float(np.exp(logs.mean()))
    out: dict[str, Any] = {"n": len(seeds), "seeds": seeds, "t_base": t_base, "t_arm": t_arm, "speedup": geo}
    if arm_miss and base_miss:
        return {**out, "speedup": None, "kind": "unreached", "unreached": {"arm": arm_miss, "baseline": base_miss}}
    if arm_miss:  # T_arm > its budget: the true ratio is smaller
        return {**out, "kind": "upper_bound", "unreached": {"arm": arm_miss}}
    if base_miss:
        return {**out, "kind": "lower_bound", "unreached": {"baseline": base_miss}}
    low = high = float("nan")
    if len(seeds) > 1:
        half = float(sps.t.ppf(0.975, len(seeds) - 1) * logs.std(ddof=1) / math.sqrt(len(seeds)))
        low, high = float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))
    return {**out, "kind": "estimate", "ci95_low": low, "ci95_high": high}


def edge_warning(arm: str, entry: dict[str, Any]) -> str | None:
    """The choice at the first or last value of a swept key: the optimum may lie outside the grid."""
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
    return f"arm {arm}: the choice sits at the edge of its grid ({'; '.join(edges)}): extend the grid"


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
            "edge_warning": edge_warning(arm, entry),
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
        "warnings": [w for a in arms.values() if (w := a["edge_warning"])],
    }


def _speedup_text(s: dict[str, Any] | None) -> str:
    if not s or s.get("speedup") is None:
        return "n/a" if not s or s.get("kind") != "unreached" else "> budget (neither reached the target)"
    if s["kind"] == "upper_bound":
        return f"≤ {fmt(s['speedup'])}× (> budget on seed(s) {s['unreached']['arm']}; a bound, no CI)"
    if s["kind"] == "lower_bound":
        return f"≥ {fmt(s['speedup'])}× (baseline > budget on seed(s) {s['unreached']['baseline']}; a bound, no CI)"
    ci = "" if math.isnan(s.get("ci95_low", float("nan"))) else f" [{fmt(s['ci95_low'])}, {fmt(s['ci95_high'])}]"
    return f"{fmt(s['speedup'])}×{ci} (n={s['n']})"


def markdown(c: dict[str, Any]) -> list[str]:
    lines = [
        "## Optimizer comparison (compare.json)",
        "",
        (
            f"Each arm's configuration was chosen on stage 1 (tune seeds {c['tune_seeds']}, best mean "
            f"{c['optimized_metric']}); **the comparison above uses stage 2 only** (confirm seeds "
            f"{c['confirm_seeds']}, shared by every arm: paired by seed, baseline arm `{c['baseline']}`)."
        ),
        "",
        f"Tokens-to-target: target {c['target_metric']} = {fmt(c['target'])} ({c['target_rule']}); the first "
        "evaluation at or below it, linearly interpolated in tokens; speedup = geometric mean of T_baseline / T_arm "
        "over seeds, 95% t-interval on the log-ratios.",
        "",
        "| arm | choice | stage-1 scores (grid order) | tokens to target (per seed) | speedup vs baseline |",
        "|---|---|---|---|---|",
    ]
    for arm, a in c["arms"].items():
        stage1 = ", ".join(
            f"{' '.join(t['overrides'])}: {'failed' if t['failed'] else fmt(t['mean'])}" for t in a["stage1"]
        )
        ttt = ", ".join(
            f"{s}: {'> budget' if v is None else f'{v:.0f}'}" for s, v in (a.get("tokens_to_target") or {}).items()
        )
        speed = "(baseline)" if arm == c["baseline"] else _speedup_text(a.get("speedup"))
        lines.append(f"| {arm} | `{' '.join(a['choice'] or [])}` | {stage1} | {ttt} | {speed} |")
    lines.append("")
    lines += [f"- **{w}**" for w in c["warnings"]]
    return [*lines, ""]
