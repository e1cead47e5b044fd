"""`lmlab-report`: statistics over a Hydra multirun (grid or Optuna) directory.

Reads job dirs, groups them by their overrides minus the seed, summarizes the test metric per group,
selects the best group on the validation metric only, compares every group with a baseline (paired over
seeds when possible, Holm-corrected), and writes report.{md,csv,json} plus PNG plots into the sweep dir.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lmlab.report import stats
from lmlab.report.collect import (
    Group,
    Job,
    ReportError,
    find_jobs,
    group_jobs,
    manifest_value,
    match_group,
    read_optuna_results,
    scalar_metrics,
)
from lmlab.report.html import fmt

CSV_COLUMNS = [
    "group",
    "n",
    "n_nan",
    "n_failed",
    "n_running",
    "states",
    "mean",
    "std",
    "ci95_low",
    "ci95_high",
    "min",
    "max",
    "diff",
    "diff_ci95_low",
    "diff_ci95_high",
    "p_paired_t",
    "p_permutation",
    "p_holm",
    "effect",
    "effect_ci95_low",
    "effect_ci95_high",
    "p_improve",
    "p_improve_ci95_low",
    "p_improve_ci95_high",
    "mde",
    "mde_effect",
    "seeds_needed",
    "test",
    "n_compared",
    "dropped_seeds",
]
MIN_CONFIGS_FOR_CURVE = 3
# Metric names where lower is better, for runs without meta/mode (and metrics other than the monitor).
LOWER_IS_BETTER = ("loss", "ppl", "perplexity", "bpb", "error", "wer", "cer")
LM_TASKS = ("causal_lm", "masked_lm")  # their default report metric is test/bpb when the runs logged it
UNFINISHED = ("running", "dead", "interrupted", "requeued", "pruned", "unknown", "pending")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmlab-report",
        description="Statistics report over Hydra multirun (sweep) directories: per-group mean/std/CI, "
        "honest selection (val) and reporting (test), baseline comparisons (paired on shared seeds, Holm "
        "correction, effect sizes, probability of improvement, power and seeds needed), expected max validation "
        "score vs. configurations (Dodge et al. 2019; Tang et al. 2020), and a self-contained report.html.",
    )
    p.add_argument(
        "sweep_dir",
        type=Path,
        nargs="+",
        help="Hydra multirun dir(s) holding job dirs (0/, 1/, ... or trial_<n>/seed=<s>/); several "
        "dirs are read as one sweep and the report is written into the first (or --out); several compare sweeps "
        "(compare.json) are several workloads: each gets its own report in its dir, and --out the performance "
        "profiles over them",
    )
    p.add_argument("--out", type=Path, default=None, help="where report.* go (default: the first sweep dir)")
    p.add_argument(
        "--metric",
        action="append",
        default=None,
        help="metric reported per group (repeat for several: the first drives the comparisons' "
        "summary; default: test/bpb for language-model runs that logged it, else the test twin of the runs' task "
        "monitor meta/monitor, e.g. test/loss; runs without one: test/f1_macro)",
    )
    p.add_argument(
        "--select",
        default=None,
        help="metric the best group is chosen on, by group mean (default: the runs' task monitor "
        "meta/monitor, e.g. val/loss; runs without one: val/f1_macro)",
    )
    p.add_argument(
        "--select-mode",
        choices=["auto", "max", "min"],
        default="auto",
        help="whether higher or lower --select is better; auto = the runs' meta/mode when --select is "
        "their monitor, else (older runs, with a warning) min for names containing "
        f"{'/'.join(LOWER_IS_BETTER)} and max otherwise",
    )
    p.add_argument(
        "--baseline",
        help='baseline group as overrides, e.g. "optimizer=adamw optimizer.lr=3e-5" '
        "(matched by value, in any order: 1e-4 == 0.0001)",
    )
    p.add_argument("--seed-key", default="seed", help="override key that varies between repeats (default: %(default)s)")
    p.add_argument(
        "--ci",
        choices=["t", "bootstrap"],
        default="t",
        help="95%% CI of group means (bootstrap = BCa from 10 seeds; fewer use the t interval)",
    )
    p.add_argument(
        "--paired-bootstrap",
        nargs=2,
        metavar=("A", "B"),
        help="bootstrap from test_predictions.csv of macro-F1(A) - macro-F1(B) over seeds and test "
        "examples (two-level), plus the example-only bootstrap; A and B are group strings or job dirs",
    )
    p.add_argument(
        "--aso",
        action="store_true",
        help="also the almost-stochastic-order test (Dror et al. 2019, via deepsig): ε_min per comparison "
        "(< 0.5: the group is almost stochastically better than the baseline); slow, imports torch",
    )
    p.add_argument(
        "--target",
        type=float,
        action="append",
        default=None,
        help="a compare sweep (compare.json): the val/loss target of tokens-to-target (default: the worst final "
        "val/loss among the baseline arm's confirm seeds); with several compare sweeps (workloads), once per sweep "
        "dir in their order",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (report.html has no images then)")
    p.add_argument(
        "--wandb",
        metavar="PROJECT",
        help="log table and plots to this W&B project (also done when a W&B run is active)",
    )
    return p


def _name_rule(metric: str) -> str:
    return "min" if any(w in metric.lower() for w in LOWER_IS_BETTER) else "max"


def _mode(metric: str, mode: str, task: dict[str, Any] | None, warnings: list[str] | None = None) -> str:
    if mode != "auto":
        return mode
    if task is not None and task["monitor"] is not None and task["mode"] in ("min", "max"):
        # The monitor itself, or its twin on another split (val/loss -> test/loss), follows meta/mode.
        if metric.split("/", 1)[-1] == str(task["monitor"]).split("/", 1)[-1]:
            return task["mode"]
    rule = _name_rule(metric)
    if warnings is not None and task is None:
        warnings.append(
            f"the runs have no meta/mode (written before it existed): {metric!r} taken as "
            f"{'lower' if rule == 'min' else 'higher'} is better from its name; pass --select-mode "
            f"to say otherwise"
        )
    return rule


def task_meta(jobs: list[Job]) -> dict[str, Any] | None:
    """The task the runs recorded (meta/task, meta/monitor, meta/mode); None for runs older than that record."""
    found = {(m.get("meta/task"), m.get("meta/monitor"), m.get("meta/mode")) for j in jobs if (m := j.metrics)}
    found.discard((None, None, None))
    if len(found) > 1:
        raise ReportError(
            f"the jobs come from different tasks or monitors {sorted(map(str, found))}; report each "
            f"task's runs separately"
        )
    if not found:
        return None
    name, monitor, mode = found.pop()
    return {"task": name, "monitor": monitor, "mode": mode}


def _raw(jobs: list[Job], metric: str) -> tuple[list[float], list[str | None]]:
    """Every numeric value of `metric` (NaN included) with its job's seed."""
    vals, seeds = [], []
    for j in jobs:
        v = (j.metrics or {}).get(metric)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals.append(float(v))
            seeds.append(j.seed)
        elif isinstance(v, str) and v.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
            vals.append(float(v))  # json.dumps(nan) writes NaN, some writers a string
            seeds.append(j.seed)
    return vals, seeds


def _values(jobs: list[Job], metric: str) -> tuple[list[float], list[str | None]]:
    """The finite values of `metric` and their seeds (NaN/inf left out of every statistic)."""
    vals, seeds = _raw(jobs, metric)
    keep = [i for i, v in enumerate(vals) if math.isfinite(v)]
    return [vals[i] for i in keep], [seeds[i] for i in keep]


def _job_or_group(arg: str, sweep_dir: Path, groups: list[Group], seed_key: str) -> list[Job] | Group:
    for cand in (Path(arg), sweep_dir / arg):
        # A run dir (even one without predictions, so the error names the missing file, not "no group").
        if cand.is_dir() and ((cand / "test_predictions.csv").is_file() or (cand / ".hydra").is_dir()):
            return [Job(cand, [], "completed", None, None)]
    return match_group(arg, groups, seed_key, "--paired-bootstrap argument")


def _read_predictions(job_dir: Path) -> pd.DataFrame:
    path = job_dir / "test_predictions.csv"
    if not path.is_file():
        raise ReportError(f"{path} does not exist; --paired-bootstrap needs the run's saved test predictions")
    df = pd.read_csv(path, dtype={"id": str, "label": str, "pred": str})
    missing = {"id", "label", "pred"} - set(df.columns)
    if missing:
        raise ReportError(f"{path}: missing columns {sorted(missing)} (expected id,label,pred,score_...)")
    if df["id"].duplicated().any():
        raise ReportError(f"{path}: duplicate ids, e.g. {df['id'][df['id'].duplicated()].iloc[0]!r}")
    return df.set_index("id").sort_index()


def paired_bootstrap(args: argparse.Namespace, groups: list[Group]) -> dict[str, Any]:
    a_arg, b_arg = args.paired_bootstrap
    a = _job_or_group(a_arg, args.sweep_dir[0], groups, args.seed_key)
    b = _job_or_group(b_arg, args.sweep_dir[0], groups, args.seed_key)
    if isinstance(a, Group) and isinstance(b, Group):
        fa = {j.seed: j for j in a.finished}
        fb = {j.seed: j for j in b.finished}
        common = [s for s in fa if s in fb]
        if common:
            pairs = [(fa[s].dir, fb[s].dir) for s in common]
        elif len(fa) == 1 and len(fb) == 1:
            pairs = [(next(iter(fa.values())).dir, next(iter(fb.values())).dir)]
        else:
            raise ReportError(
                f"--paired-bootstrap: groups {a.name!r} and {b.name!r} share no finished seed; "
                f"pass two job dirs instead"
            )
    else:
        a_dirs = [j.dir for j in a.finished] if isinstance(a, Group) else [j.dir for j in a]
        b_dirs = [j.dir for j in b.finished] if isinstance(b, Group) else [j.dir for j in b]
        if len(a_dirs) != 1 or len(b_dirs) != 1:
            raise ReportError(
                "--paired-bootstrap: mix of a group with several runs and a job dir; "
                "pass two job dirs or two group strings"
            )
        pairs = [(a_dirs[0], b_dirs[0])]

    frames = [(_read_predictions(da), _read_predictions(db)) for da, db in pairs]
    ref = frames[0][0]
    for (fa_, fb_), (da, db) in zip(frames, pairs, strict=True):
        for df, d in ((fa_, da), (fb_, db)):
            if not df.index.equals(ref.index):
                raise ReportError(
                    f"--paired-bootstrap: {d}/test_predictions.csv has other example ids than "
                    f"{pairs[0][0]}/test_predictions.csv; both must predict the same test set"
                )
            if not (df["label"] == ref["label"]).all():
                raise ReportError(
                    f"--paired-bootstrap: {d}/test_predictions.csv has other gold labels than "
                    f"{pairs[0][0]}/test_predictions.csv for the same ids"
                )
    cols = [ref["label"]] + [f["pred"] for pair in frames for f in pair]
    classes, codes = stats.encode_labels(*cols)
    y = codes[0]
    preds = codes[1:]
    res = stats.paired_bootstrap_f1(y, preds[0::2], preds[1::2], len(classes))
    two_level = None
    if len(pairs) >= 2:
        n_classes = len(classes)
        tl = stats.two_level_bootstrap(
            lambda pred, idx: stats.macro_f1_resampled(y, pred, n_classes, idx), preds[0::2], preds[1::2], y.size
        )
        two_level = {
            "diff": tl.diff,
            "diff_ci95_low": tl.ci_low,
            "diff_ci95_high": tl.ci_high,
            "std": tl.std,
            "n_resamples": tl.n_resamples,
            "n_pairs": tl.n_pairs,
        }
    return {
        "a": a.name if isinstance(a, Group) else str(pairs[0][0]),
        "b": b.name if isinstance(b, Group) else str(pairs[0][1]),
        "pairs": [[str(da), str(db)] for da, db in pairs],
        "n_examples": res.n_examples,
        "f1_macro_a": res.f1_a,
        "f1_macro_b": res.f1_b,
        "diff": res.diff,
        "diff_ci95_low": res.ci_low,
        "diff_ci95_high": res.ci_high,
        "p_value": res.pvalue,
        "n_resamples": res.n_resamples,
        # Seeds x examples (Bouthillier et al. 2021); None with one run pair (no seed variance to resample).
        "two_level": two_level,
    }


def _few(names: list[str], limit: int = 8) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def consistency_warnings(jobs: list[Job]) -> list[str]:
    out = []
    for section, key, what in (("git", "commit", "git commit"), ("data", "fingerprint", "data fingerprint")):
        seen: dict[str, list[str]] = {}
        for j in jobs:
            v = manifest_value(j.manifest, section, key)
            if v is not None:
                seen.setdefault(v, []).append(j.dir.name)
        if len(seen) > 1:
            detail = "; ".join(f"{v}: jobs {_few(d)}" for v, d in seen.items())
            out.append(f"jobs of this sweep differ in {what} ({detail}); their results may not be comparable")
    return out


def _fmt_seeds(seeds: list[str]) -> str:
    return ",".join(seeds)


def analyze(args: argparse.Namespace) -> dict[str, Any]:
    ignored: list[str] = []
    jobs = [j for d in args.sweep_dir for j in find_jobs(d, ignored)]
    if len(args.sweep_dir) > 1:
        for j in jobs:  # jobs of several sweeps: name them by sweep too
            j.prefix = str(j.dir.parent if j.trial is None else j.dir.parent.parent)
    finished = [j for j in jobs if j.finished]
    if not finished:
        states = ", ".join(f"{j.name}: {j.status}" for j in jobs)
        raise ReportError(f"{_dirs(args)} has no finished jobs (status completed with metrics.json); found {states}")
    warnings: list[str] = []
    notes: list[str] = []
    task = task_meta(finished)
    if args.select is None:
        args.select = task["monitor"] if task else "val/f1_macro"
    known = scalar_metrics(finished)
    if not args.metric:
        args.metric = [("test/" + task["monitor"].split("/", 1)[-1]) if task else "test/f1_macro"]
        if task and task["task"] in LM_TASKS and "test/bpb" in known:
            args.metric = ["test/bpb"]  # bits per byte: comparable across tokenizers, unlike the loss per token
    metrics = list(dict.fromkeys(args.metric))
    metric = metrics[0]
    for opt, name in [*(("--metric", m) for m in metrics), ("--select", args.select)]:
        if name not in known:
            raise ReportError(f"unknown metric {name!r} for {opt}; metrics found: {', '.join(known)}")
    groups = group_jobs(jobs, args.seed_key)
    warnings += consistency_warnings(jobs)
    if ignored:
        notes.append(
            f"{len(ignored)} subdir(s) that hold runs but are not jobs of this comparison were ignored "
            f"(only immediate job dirs and trial_*/ seed dirs are): {_few(sorted(ignored))}"
        )
    for j in jobs:
        if j.status == "completed" and j.metrics is None:
            warnings.append(f"job {j.name} is marked completed but has no metrics.json; left out")
        elif j.finished and metric not in j.metrics:
            warnings.append(f"job {j.name} has no {metric!r}; left out of that metric")
    state_counts: dict[str, int] = {}
    for j in jobs:
        state_counts[j.status] = state_counts.get(j.status, 0) + 1
    live = [j.name for j in jobs if j.status == "running"]
    if live:
        warnings.append(f"{len(live)} job(s) still running ({_few(live)}): the numbers may change when they end")
    stopped = [f"{j.name} ({j.status})" for j in jobs if j.status in ("dead", "interrupted", "requeued", "pruned")]
    if stopped:
        notes.append(f"{len(stopped)} job(s) did not finish and are left out: {_few(stopped)}")

    baseline = match_group(args.baseline, groups, args.seed_key, "--baseline") if args.baseline else None
    if baseline is not None and not _values(baseline.finished, metric)[0]:
        raise ReportError(f"--baseline group {baseline.name!r} has no finished job with a finite {metric!r}")

    metric_mode = _mode(metric, "auto", task)
    tables = {m: _metric_table(m, groups, baseline, args, _mode(m, "auto", task), warnings) for m in metrics}
    rows, comparisons = tables[metric]

    # Honest selection: best group by the mean of the *validation* metric, reported on the test metric.
    mode = _mode(args.select, args.select_mode, task, warnings)
    sel_means: dict[str, float] = {}
    for g in groups:
        raw, _ = _raw(g.finished, args.select)
        vals = [v for v in raw if math.isfinite(v)]
        if len(vals) < len(raw):
            warnings.append(
                f"group {g.name!r}: {len(raw) - len(vals)} non-finite {args.select!r} value(s) left out of selection"
            )
        if vals:
            sel_means[g.name] = float(np.mean(vals))
    if not sel_means:
        raise ReportError(f"no finished job has a finite {args.select!r}; pick another --select")
    best_value = (max if mode == "max" else min)(sel_means.values())
    tol = stats.CONSTANT_RTOL * max(1.0, abs(best_value))
    tied = [name for name, v in sel_means.items() if abs(v - best_value) <= tol]
    best = tied[0]  # sel_means follows the table order (groups sorted by override values)
    best_row = next(r for r in rows if r["group"] == best)
    best_group = next(g for g in groups if g.name == best)
    flags = []
    if len(tied) > 1:
        flags.append(
            f"tie: {len(tied)} groups have the same {args.select} mean {fmt(best_value)} "
            f"({', '.join(tied)}); the first in table order (sorted by override values) was taken"
        )
    if best_group.n_failed or best_group.count(*UNFINISHED):
        flags.append(
            f"the selected group has jobs that did not finish ({best_group.states}): its mean rests on "
            f"{best_row['n']} value(s)"
        )
    warnings += [f"selection: {f}" for f in flags]
    selection = {
        "select_metric": args.select,
        "select_mode": mode,
        "report_metric": metric,
        "group": best,
        "select_mean": sel_means[best],
        "report_mean": best_row["mean"],
        "report_std": best_row["std"],
        "report_ci95_low": best_row["ci95_low"],
        "report_ci95_high": best_row["ci95_high"],
        "n": best_row["n"],
        "tied": tied,
        "flags": flags,
        "rule": "highest group mean" if mode == "max" else "lowest group mean",
    }

    expected_max = None
    if len(sel_means) >= MIN_CONFIGS_FOR_CURVE:
        scores = np.array(list(sel_means.values()))
        sign = 1.0 if mode == "max" else -1.0  # expected *min* of a loss = -(expected max of -loss)
        em, es = stats.expected_max_curve(sign * scores)
        um, us = stats.expected_max_unbiased(sign * scores)
        hours = [_group_hours(g) for g in groups if g.name in sel_means]
        expected_max = {
            "metric": args.select,
            "mode": mode,
            "n_configs": int(scores.size),
            "n": list(range(1, scores.size + 1)),
            "expected": (sign * em).tolist(),
            "std": es.tolist(),
            "expected_unbiased": (sign * um).tolist(),
            "std_unbiased": us.tolist(),
            "observed_min": float(scores.min()),
            "observed_max": float(scores.max()),
            "runs_per_config": float(np.mean([len(g.jobs) for g in groups if g.name in sel_means])),
            # Budget in hours: n configurations x the mean wall-clock hours per configuration (all its seeds,
            # from manifest start/end times); None when the manifests do not say.
            "hours_per_config": float(np.mean(hours)) if hours and all(h is not None for h in hours) else None,
        }
    else:
        # Not a problem with the sweep, so a note rather than a warning on stderr.
        notes.append(
            f"expected-max curve skipped: {len(sel_means)} configuration(s) with "
            f"{args.select!r}, needs at least {MIN_CONFIGS_FOR_CURVE}"
        )
    if args.ci == "bootstrap" and any(0 < r["n"] < stats.MIN_BOOTSTRAP_N for r in rows):
        notes.append(
            f"--ci bootstrap: groups with fewer than {stats.MIN_BOOTSTRAP_N} values use the Student t "
            f"interval instead (BCa covers far below 95% with few seeds)"
        )

    m = sum(c is not None for c in comparisons)
    power = None
    if m:
        alpha_m = stats.ALPHA / m
        shown = [(r, c) for r, c in zip(rows, comparisons, strict=True) if c is not None]
        n_typ = int(np.median([c.n for _, c in shown]))
        paired_any = any(c.paired for _, c in shown)
        power = {
            "alpha": stats.ALPHA,
            "m": m,
            "alpha_m": alpha_m,
            "power": stats.POWER,
            "n_seeds": n_typ,
            "paired": paired_any,
            "mde_effect": stats.min_detectable_effect(n_typ, alpha_m, paired_any),
            "mde_effect_alpha": stats.min_detectable_effect(n_typ, stats.ALPHA, paired_any),
        }

    selection["support"] = support_statement(selection, rows, baseline.name if baseline else None, metric)
    # The metric-vs-hyperparameter plot shows what the choice was made on (validation), never the test metric.
    select_rows, _ = _metric_table(args.select, groups, None, args, mode, [])
    hparam = numeric_hparam(groups, select_rows)
    if hparam is not None:
        hparam["metric"] = args.select

    result: dict[str, Any] = {
        "sweep_dir": _dirs(args),
        "sweep_dirs": [str(d) for d in args.sweep_dir],
        "metric": metric,
        "metrics": metrics,
        "metric_mode": metric_mode,
        "select": args.select,
        "seed_key": args.seed_key,
        "ci": args.ci,
        "task": task,
        "n_jobs": len(jobs),
        "n_finished": len(finished),
        "n_failed": state_counts.get("failed", 0),
        "n_running": state_counts.get("running", 0),
        "states": dict(sorted(state_counts.items())),
        "ignored_dirs": sorted(ignored),
        "baseline": baseline.name if baseline else None,
        "constant_overrides": groups[0].constant if groups else [],
        "groups": rows,
        "comparisons": {
            r["group"]: {
                "test": c.test,
                "paired": c.paired,
                "n": c.n,
                "n_base": c.n_base,
                "dropped_seeds": list(c.dropped_seeds),
                "p_exact": c.p_exact,
                "effect_name": c.effect.name,
                "note": c.note,
            }
            for r, c in zip(rows, comparisons, strict=True)
            if c
        },
        "extra_metrics": {mm: tables[mm][0] for mm in metrics[1:]},
        "power": power,
        "selection": selection,
        "expected_max": expected_max,
        "warnings": warnings,
        "notes": notes,
        "optuna": read_optuna_results(args.sweep_dir[0]),
        "provenance": _provenance(jobs),
        "plots": [],
        "seed_values": {g.name: _seed_points(g, metric) for g in groups},
        "curves": learning_curves(groups, args.select),
        "hparam": hparam,
    }
    if args.paired_bootstrap:
        result["paired_bootstrap"] = paired_bootstrap(args, groups)
    if getattr(args, "aso", False) and baseline is not None:
        result["aso"] = aso(groups, baseline, metric, metric_mode, m)
    return result


def aso(groups: list[Group], baseline: Group, metric: str, mode: str, m: int) -> dict[str, float]:
    """ε_min of the almost-stochastic-order test (Dror et al. 2019; del Barrio et al. 2018) of each group over the
    baseline, from deepsig, at 95% confidence with its Bonferroni correction for the m comparisons. Scores are
    negated for lower-is-better metrics, so ε_min < 0.5 always means "the group is better"."""
    try:
        from deepsig import aso as deepsig_aso
    except ImportError as e:
        raise ReportError("--aso needs deepsig: pip install 'deepsig>=1.2.8'") from e
    sign = 1.0 if mode == "max" else -1.0
    base = sign * np.array(_values(baseline.finished, metric)[0])
    out = {}
    for g in groups:
        vals = _values(g.finished, metric)[0]
        if g is baseline or not vals:
            continue
        out[g.name] = float(
            deepsig_aso(
                sign * np.array(vals),
                base,
                confidence_level=stats.CONFIDENCE,
                num_comparisons=max(m, 1),
                seed=stats.RNG_SEED,
                show_progress=False,
            )
        )
    return out


def _dirs(args: argparse.Namespace) -> str:
    return " ".join(str(d) for d in args.sweep_dir)


def _metric_table(
    metric: str, groups: list[Group], baseline: Group | None, args: argparse.Namespace, mode: str, warnings: list[str]
) -> tuple[list[dict[str, Any]], list[stats.Comparison | None]]:
    rows: list[dict[str, Any]] = []
    comparisons: list[stats.Comparison | None] = []
    base_vals, base_seeds = _values(baseline.finished, metric) if baseline else ([], [])
    n_cmp = sum(1 for g in groups if baseline is not None and g is not baseline and _values(g.finished, metric)[0])
    alpha_m = stats.ALPHA / max(n_cmp, 1)
    for g in groups:
        raw, _ = _raw(g.finished, metric)
        vals, seeds = _values(g.finished, metric)
        n_nan = len(raw) - len(vals)
        if n_nan:
            warnings.append(f"group {g.name!r}: {n_nan} non-finite {metric!r} value(s) left out of every statistic")
        s = stats.summarize(vals, args.ci)
        row: dict[str, Any] = dict.fromkeys(CSV_COLUMNS, float("nan"))
        row |= {
            "group": g.name,
            "n": s.n,
            "n_nan": n_nan,
            "n_failed": g.n_failed,
            "n_running": g.count("running"),
            "states": g.states,
            "mean": s.mean,
            "std": s.std,
            "ci95_low": s.ci_low,
            "ci95_high": s.ci_high,
            "min": s.min,
            "max": s.max,
            "test": "",
            "dropped_seeds": "",
        }
        cmp = None
        if baseline is not None and g is not baseline and vals:
            cmp = stats.compare(vals, seeds, base_vals, base_seeds, higher_is_better=mode == "max", alpha_power=alpha_m)
            row.update(
                diff=cmp.diff,
                diff_ci95_low=cmp.diff_ci_low,
                diff_ci95_high=cmp.diff_ci_high,
                p_paired_t=cmp.p_t,
                p_permutation=cmp.p_permutation,
                effect=cmp.effect.value,
                effect_ci95_low=cmp.effect.ci_low,
                effect_ci95_high=cmp.effect.ci_high,
                p_improve=cmp.poi.value,
                p_improve_ci95_low=cmp.poi.ci_low,
                p_improve_ci95_high=cmp.poi.ci_high,
                mde=cmp.mde_units,
                mde_effect=cmp.mde,
                seeds_needed=cmp.seeds_needed if cmp.seeds_needed is not None else float("nan"),
                test=cmp.test,
                n_compared=cmp.n,
                dropped_seeds=_fmt_seeds(list(cmp.dropped_seeds)),
            )
            if cmp.dropped_seeds:
                warnings.append(
                    f"group {g.name!r} vs baseline on {metric!r}: paired on the {cmp.n} shared seeds; "
                    f"seed(s) {_fmt_seeds(list(cmp.dropped_seeds))} have no partner and are left out "
                    f"of the comparison"
                )
        comparisons.append(cmp)
        rows.append(row)
    # The Holm family is every comparison shown, a NaN p included (it counts as 1).
    p_holm = stats.holm([c.p_t if c else np.nan for c in comparisons if c is not None])
    it = iter(p_holm)
    for row, c in zip(rows, comparisons, strict=True):
        if c is not None:
            row["p_holm"] = next(it)
    return rows, comparisons


def _seed_points(g: Group, metric: str) -> list[dict[str, Any]]:
    return [{"seed": s, "value": v} for v, s in zip(*_values(g.finished, metric), strict=True)]


def _hours(job: Job) -> float | None:
    from datetime import datetime

    m = job.manifest or {}
    start, end = m.get("start_time"), m.get("end_time")
    if not start or not end:
        return None
    try:
        return (datetime.fromisoformat(str(end)) - datetime.fromisoformat(str(start))).total_seconds() / 3600
    except ValueError:
        return None


def _group_hours(g: Group) -> float | None:
    hours = [_hours(j) for j in g.jobs]
    return None if not hours or any(h is None for h in hours) else float(sum(hours))


def _provenance(jobs: list[Job]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, key in (("git", "commit"), ("data", "fingerprint")):
        seen = sorted({v for j in jobs if (v := manifest_value(j.manifest, section, key)) is not None})
        out[f"{section}.{key}"] = seen
    out["not_finished"] = [f"{j.name}: {j.status}" for j in jobs if not j.finished]
    return out


def _seed_curve(job: Job, metric: str) -> tuple[pd.Series, str] | None:
    """One run's `metric` against training progress: curves.csv (every evaluation, x = tokens trained) when the
    run wrote one with that column, else csv/metrics.csv (logger=csv; the last value per epoch, or per step)."""
    from lmlab.rundir.files import CURVES

    for path, x in ((job.dir / CURVES, "tokens"), (job.dir / "csv" / "metrics.csv", None)):
        if not path.is_file():
            continue
        try:
            df = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError):
            continue
        if metric not in df.columns:
            continue
        x = x or ("epoch" if "epoch" in df.columns else "step")
        if x not in df.columns:
            continue
        df = df[[x, metric]].apply(pd.to_numeric, errors="coerce").dropna()
        return df.groupby(x)[metric].last(), x
    return None


def learning_curves(groups: list[Group], metric: str) -> dict[str, Any]:
    """Per group: `metric` against tokens (curves.csv) or epochs (csv/metrics.csv) per seed, and the mean and
    min..max over seeds. Seeds evaluated at different x (e.g. token counts that differ by a batch) are linearly
    interpolated onto the union of their x within each seed's own range; a group mixing both sources uses the one
    most of its seeds have."""
    out: dict[str, Any] = {}
    for g in groups:
        found = [c for j in g.finished if (c := _seed_curve(j, metric)) is not None]
        if not found:
            continue
        x_name = max({x for _, x in found}, key=[x for _, x in found].count)
        per_seed = [s for s, x in found if x == x_name and len(s)]
        if not per_seed:
            continue
        grid = np.array(sorted({float(v) for s in per_seed for v in s.index}))
        stack = np.full((len(per_seed), grid.size), np.nan)
        for i, s in enumerate(per_seed):
            xs, ys = s.index.to_numpy(dtype=float), s.to_numpy(dtype=float)
            inside = (grid >= xs.min()) & (grid <= xs.max())
            stack[i, inside] = np.interp(grid[inside], xs, ys)
        out[g.name] = {
            "x": grid.tolist(),
            "mean": np.nanmean(stack, axis=0).tolist(),
            "low": np.nanmin(stack, axis=0).tolist(),
            "high": np.nanmax(stack, axis=0).tolist(),
            "n_seeds": len(per_seed),
            "x_name": x_name,
        }
    return out


def support_statement(selection: dict[str, Any], rows: list[dict[str, Any]], baseline: str | None, metric: str) -> str:
    """One sentence next to "selected": what the data support about the selected group (a highest mean is not a
    detected difference)."""
    sel = selection["group"]
    row = next((r for r in rows if r["group"] == sel), None)
    pick = f"the {selection['rule']} on {selection['select_metric']}"
    if baseline is None:
        return (
            f"What the data support: {pick} only; no difference was tested (--baseline <group> compares each "
            f"group with one on {metric})."
        )
    if sel == baseline:
        others = [r for r in rows if r["group"] != baseline and math.isfinite(r.get("p_holm", math.nan))]
        better = [r["group"] for r in others if r["p_holm"] < stats.ALPHA]
        if not better:
            return (
                f"What the data support: the baseline itself was selected; no other group differs detectably from "
                f"it on {metric} at this power (Holm p ≥ {fmt(stats.ALPHA)})."
            )
        return (
            f"What the data support: the baseline itself was selected; {len(better)} of the {len(others)} groups "
            f"compared with it differ detectably on {metric} (Holm p < {fmt(stats.ALPHA)}): {', '.join(better)}."
        )
    p = row.get("p_holm", math.nan) if row else math.nan
    if row is not None and math.isfinite(p) and p < stats.ALPHA:
        return (
            f"What the data support: a detectable difference from the baseline {baseline} on {metric} (diff "
            f"{fmt(row['diff'])}, Holm p = {fmt(p)}, n = {row.get('n_compared', row['n'])})."
        )
    needed = row.get("seeds_needed", math.nan) if row else math.nan
    seeds = (
        f"{int(needed)} seeds needed to detect the observed diff"
        if isinstance(needed, (int, float)) and math.isfinite(needed)
        else f"seeds needed: more than {stats.MAX_SEEDS_NEEDED} (or no effect)"
    )
    return (
        f"What the data support: no detectable difference from the baseline {baseline} on {metric} at this power "
        f"(diff {fmt(row['diff'] if row else math.nan)}, Holm p = {fmt(p)}); MDE {fmt(row['mde'] if row else math.nan)}"
        f" ({metric} units, 80% power), {seeds}."
    )


def numeric_hparam(groups: list[Group], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The one numeric override that varies across groups (e.g. optimizer.lr) and the metric against it."""
    from lmlab.report.collect import override_key, parsed_value

    per_key: dict[str, dict[str, float]] = {}
    for g in groups:
        for o in g.overrides:
            v = parsed_value(o)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                per_key.setdefault(override_key(o), {})[g.name] = float(v)
    keys = [k for k, v in per_key.items() if len(set(v.values())) >= 2]
    if not keys:
        return None
    key = keys[0]
    means = {r["group"]: r for r in rows}
    others = {g.name: " ".join(o for o in g.overrides if override_key(o) != key) for g in groups}
    # One series per setting of the other overrides (e.g. one line per optimizer across lr).
    pts = [
        {
            "group": name,
            "series": others.get(name, ""),
            "x": x,
            "mean": means[name]["mean"],
            "low": means[name]["ci95_low"],
            "high": means[name]["ci95_high"],
        }
        for name, x in per_key[key].items()
        if name in means
    ]
    xs = [p["x"] for p in pts]
    log = min(xs) > 0 and max(xs) / min(xs) >= 10 or any(w in key for w in ("lr", "weight_decay"))
    return {"key": key, "points": pts, "log": bool(log and min(xs) > 0)}


def _table(result: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(result["groups"]).reindex(columns=CSV_COLUMNS)


def power_statement(result: dict[str, Any]) -> str | None:
    pw = result.get("power")
    if not pw:
        return None
    design = "paired" if pw["paired"] else "unpaired (per group)"
    return (
        f"With {pw['n_seeds']} seeds ({design}) and {pw['m']} comparison(s), this design detects at 80% power "
        f"only standardized effects of {pw['effect_name'] if 'effect_name' in pw else 'd'} ≥ "
        f"{fmt(pw['mde_effect'])} at the Bonferroni level α/m = {fmt(pw['alpha_m'])} "
        f"(≥ {fmt(pw['mde_effect_alpha'])} at α = {fmt(pw['alpha'])}). `mde` gives that smallest detectable "
        f"difference in metric units per comparison; `seeds_needed` the seeds that would detect the observed "
        f"effect at 80% power at α/m (empty: more than {stats.MAX_SEEDS_NEEDED}, or no effect)."
    )


def render_markdown(result: dict[str, Any]) -> str:
    sel = result["selection"]
    ci = "Student t" if result["ci"] == "t" else "BCa bootstrap (t below 10 values)"
    better = "higher" if sel["select_mode"] == "max" else "lower"
    states = ", ".join(f"{n} {s}" for s, n in result["states"].items())
    lines = [
        f"# Sweep report: `{result['sweep_dir']}`",
        "",
        (
            f"{result['n_jobs']} jobs, {result['n_finished']} finished, {result['n_failed']} failed ({states}). "
            f"Groups = overrides without `{result['seed_key']}`, compared by "
            f"value; CI: {ci} 95% of the mean. Non-finite values are left out of every statistic and counted in "
            "`n_nan`."
        ),
        "",
        *(
            [f"Overrides shared by every job (left out of group names): `{' '.join(result['constant_overrides'])}`", ""]
            if result.get("constant_overrides")
            else []
        ),
        "## Selection",
        "",
        (
            f"The best group was chosen on **{sel['select_metric']}** (group mean, {better} is better) and is "
            f"reported on **{sel['report_metric']}**; the test metric played no part in the choice."
        ),
        "",
        f"- selected: `{sel['group']}` ({sel['select_metric']} mean {fmt(sel['select_mean'])}). {sel['support']}",
        (
            f"- {sel['report_metric']}: {fmt(sel['report_mean'])} ± {fmt(sel['report_std'])} (std), "
            f"95% CI [{fmt(sel['report_ci95_low'])}, {fmt(sel['report_ci95_high'])}], n={sel['n']}"
        ),
        *[f"- **{f}**" for f in sel["flags"]],
        "",
        f"## {result['metric']} per group",
        "",
        *_md_table(result["groups"]),
    ]
    if result["baseline"]:
        paired = [g for g, c in result["comparisons"].items() if c["paired"]]
        welch = [g for g, c in result["comparisons"].items() if not c["paired"]]
        lines += [
            "",
            (
                f"Baseline: `{result['baseline']}`. `diff` = mean over the compared values of group − baseline. "
                "Groups that share at least 2 seeds with the baseline are paired on those seeds (paired t-test, "
                "exact sign-flip permutation test, diff CI = t CI of the paired differences, effect = Cohen's d_z "
                "with its noncentral-t CI, `p_improve` = share of shared seeds on which the group is better); the "
                "others (genuinely unpaired) use Welch's t-test, an independent permutation test, Hedges' g and "
                "P(X better than Y) over all pairs; ties count one half, p_improve's CI is a percentile bootstrap "
                "over seeds. Permutation statistics within 1e-9 (relative) of the observed one count as ties (equal "
                "accuracies stay equal despite float rounding), and every assignment is enumerated when there are at "
                "most 65536 (else 9999 random ones). `p_paired_t` is the t-test's p (paired t, or Welch for the "
                f"unpaired); `p_holm`: Holm correction of p_paired_t across all {len(result['comparisons'])} "
                "comparisons shown (an undefined p counts as 1). Constant differences leave the t-test "
                "undefined; their p_permutation is the exact sign-flip p (1 for no difference, 2/2^n otherwise)."
            ),
            "",
        ]
        if paired:
            lines.append(f"- paired: {', '.join(f'`{g}`' for g in paired)}")
        if welch:
            lines.append(
                f"- unpaired (Welch; seeds not shared with the baseline): {', '.join(f'`{g}`' for g in welch)}"
            )
        for g, c in result["comparisons"].items():
            if c["dropped_seeds"]:
                lines.append(
                    f"- `{g}`: paired on {c['n']} shared seeds; dropped seed(s) without a partner: "
                    f"{', '.join(c['dropped_seeds'])}"
                )
            if c["note"]:
                lines.append(f"- `{g}`: {c['note']}")
        if result.get("aso"):
            lines += [
                "",
                (
                    f"Almost stochastic order (Dror et al. 2019, deepsig; ε_min < 0.5: the group is almost "
                    f"stochastically better than the baseline, 95% confidence, Bonferroni over "
                    f"{len(result['aso'])}):"
                ),
                "",
            ]
            lines += [f"- `{g}`: ε_min = {fmt(e)}" for g, e in result["aso"].items()]
        statement = power_statement(result)
        if statement:
            lines += ["", "## Power", "", statement]
    for m, rows in result.get("extra_metrics", {}).items():
        lines += ["", f"## {m} per group", "", *_md_table(rows)]
    em = result["expected_max"]
    if em:
        kind = "max" if em["mode"] == "max" else "min"
        hours = f", {fmt(em['hours_per_config'])} h" if em.get("hours_per_config") else ""
        lines += [
            "",
            "## Expected best validation score vs. configurations tried",
            "",
            (
                f"Expected {kind} of {em['metric']} (group means) over n of the {em['n_configs']} configurations: "
                "drawn with replacement (Dodge et al. 2019) and the unbiased estimator without replacement (Tang "
                f"et al. 2020). Budget: each configuration is {fmt(em['runs_per_config'])} runs{hours}."
            ),
            "",
            "| n | runs | expected (Dodge) | std | expected (unbiased) | std |",
            "|---|---|---|---|---|---|",
        ]
        rows = zip(em["n"], em["expected"], em["std"], em["expected_unbiased"], em["std_unbiased"], strict=True)
        lines += [
            f"| {n} | {fmt(n * em['runs_per_config'])} | {fmt(e)} | {fmt(s)} | {fmt(u)} | {fmt(us)} |"
            for n, e, s, u, us in rows
        ]
    pb = result.get("paired_bootstrap")
    if pb:
        lines += [
            "",
            "## Bootstrap over test examples",
            "",
            (
                f"macro-F1(A) − macro-F1(B), A = `{pb['a']}`, B = `{pb['b']}`, {pb['n_examples']} examples, "
                f"{len(pb['pairs'])} run pair(s): {fmt(pb['f1_macro_a'])} − {fmt(pb['f1_macro_b'])} = "
                f"**{fmt(pb['diff'])}**."
            ),
            "",
        ]
        tl = pb.get("two_level")
        if tl:
            lines.append(
                f"- seeds × examples (two-level) bootstrap, {tl['n_resamples']} resamples: 95% CI "
                f"[{fmt(tl['diff_ci95_low'])}, {fmt(tl['diff_ci95_high'])}] (both sources of variance)"
            )
        lines.append(
            f"- example-only bootstrap (seeds held fixed; ignores seed variance), {pb['n_resamples']} "
            f"resamples: 95% CI [{fmt(pb['diff_ci95_low'])}, {fmt(pb['diff_ci95_high'])}], "
            f"p = {fmt(pb['p_value'])}"
        )
    if result.get("compare"):
        from lmlab.report import compare

        lines += ["", *compare.markdown(result["compare"])]
    if result["optuna"]:
        lines += [
            "",
            "## Optuna",
            "",
            "optimization_results.yaml (chosen on the sweep's objective):",
            "",
            "```",
            json.dumps(result["optuna"], indent=2, default=str),
            "```",
        ]
    prov = result.get("provenance") or {}
    lines += [
        "",
        "## Provenance",
        "",
        f"- git commits: {', '.join(prov.get('git.commit') or ['(none recorded)'])}",
        f"- data fingerprints: {', '.join(prov.get('data.fingerprint') or ['(none recorded)'])}",
        f"- not finished: {_few(prov.get('not_finished') or []) or 'none'}",
    ]
    if result["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in result["warnings"]]
    if result["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    if result["plots"]:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in result["plots"]]
    return "\n".join(lines) + "\n"


def _md_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| " + " | ".join(CSV_COLUMNS) + " |", "|" + "---|" * len(CSV_COLUMNS)]
    for row in pd.DataFrame(rows).reindex(columns=CSV_COLUMNS).to_dict("records"):
        out.append("| " + " | ".join(fmt(row[c]) for c in CSV_COLUMNS) + " |")
    return out


def _json_safe(obj: Any) -> Any:
    # JSON has no NaN: missing statistics become null.
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, (np.floating, np.integer)):
        return _json_safe(obj.item())
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    sel = result["selection"]["group"]
    t = Table(title=f"{result['metric']} per group (selected on {result['select']}: {sel})")
    cols = [
        "group",
        "n",
        "n_nan",
        "n_failed",
        "mean",
        "std",
        "ci95_low",
        "ci95_high",
        "diff",
        "p_paired_t",
        "p_holm",
        "effect",
        "p_improve",
        "seeds_needed",
    ]
    for c in cols:
        # Group strings are what users paste into --baseline: never wrap them.
        t.add_column(c, justify="left" if c == "group" else "right", no_wrap=c == "group")
    for row in _table(result).to_dict("records"):
        t.add_row(*(fmt(row[c]) for c in cols), style="bold" if row["group"] == sel else None)
    # Wide enough for the longest group plus the number columns (a log file has no terminal width).
    longest = max((len(str(r["group"])) for r in result["groups"]), default=0)
    Console(width=max(120, Console().width, longest + 10 * len(cols))).print(t)


def log_wandb(result: dict[str, Any], out: Path, project: str | None) -> str | None:
    """Log the table and plots to the active W&B run, or to a new run in `project`; returns the run id."""
    if project is None and "wandb" not in sys.modules:
        return None  # no run can be active without wandb imported; skip its import cost
    import os

    import wandb

    run = wandb.run
    own = run is None
    if own:
        if project is None:
            return None
        config = {k: result[k] for k in ("metric", "select", "baseline", "ci")}
        run = wandb.init(
            project=project,
            job_type="report",
            name=f"report-{out.name}",
            dir=os.environ.get("WANDB_DIR", str(out)),
            config=config,
        )
    data = {"report/table": wandb.Table(dataframe=_table(result))}
    data.update({f"report/{Path(p).stem}": wandb.Image(str(out / p)) for p in result["plots"]})
    run.log(data)
    run.summary.update(
        {f"report/selection/{k}": v for k, v in _json_safe(result["selection"]).items() if v is not None}
    )
    run_id = run.id
    if own:
        run.finish()
    return run_id


def run(args: argparse.Namespace) -> dict[str, Any]:
    from lmlab.report import compare, html, plots

    records = [compare.read(d) for d in args.sweep_dir]
    if len(records) > 1 and any(r is not None for r in records):
        return run_workloads(args, records)
    record = records[0]
    sweep = args.sweep_dir[0]
    if args.target and (record is None or len(args.target) > 1):
        raise ReportError(
            f"--target {args.target} needs "
            + ("a compare sweep (compare.json); this is not one" if record is None else "one value for one sweep")
        )
    if record is not None:
        compare.configure(args, record)  # stage 2 (confirm/) only, the baseline arm as the baseline
    result = analyze(args)
    if record is not None:
        result["compare"] = compare.section(record, sweep, args.target[0] if args.target else None)
        result["warnings"] += result["compare"]["warnings"]
    if result.get("power"):
        names = {c["effect_name"] for c in result["comparisons"].values()}
        result["power"]["effect_name"] = "/".join(sorted(names))
    out = args.out or args.sweep_dir[0]
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        result["plots"] = plots.write_plots(result, out)
    _table(result).to_csv(out / "report.csv", index=False, float_format="%.17g")
    (out / "report.json").write_text(json.dumps(_json_safe(result), indent=2) + "\n")
    (out / "report.md").write_text(render_markdown(result))
    extra = compare.html_section(result["compare"]) if result.get("compare") else None
    (out / "report.html").write_text(html.render(result, out, CSV_COLUMNS, power_statement(result), extra))
    for w in result["warnings"]:
        print(f"WARNING: {w}", file=sys.stderr)
    print_table(result)
    print(f"selected: {result['selection']['group']}. {result['selection']['support']}")
    if result.get("compare"):
        print("\n".join(compare.markdown(result["compare"])).replace("`", ""))
    statement = power_statement(result)
    if statement:
        print(statement.replace("`", ""))
    pb = result.get("paired_bootstrap")
    if pb:
        print(
            f"paired bootstrap {pb['a']!r} vs {pb['b']!r}: diff {fmt(pb['diff'])} "
            f"[{fmt(pb['diff_ci95_low'])}, {fmt(pb['diff_ci95_high'])}], p={fmt(pb['p_value'])}"
        )
    wandb_id = log_wandb(result, out, args.wandb)
    if wandb_id:
        print(f"logged to W&B run {wandb_id}")
    print(
        f"wrote {out / 'report.md'}, report.html, report.csv, report.json" + "".join(f", {p}" for p in result["plots"])
    )
    return result


def run_workloads(args: argparse.Namespace, records: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Several compare sweeps, one workload each: every sweep's own report in its dir (as `lmlab-report <sweep>`
    writes it), then the performance profiles over them into --out."""
    from lmlab.report import compare, plots

    dirs = list(args.sweep_dir)
    plain = [str(d) for d, r in zip(dirs, records, strict=True) if r is None]
    if plain:
        raise ReportError(
            f"{', '.join(plain)} hold(s) no compare.json while the other dirs do: several compare sweeps are "
            f"several workloads (performance profiles); report a plain sweep on its own"
        )
    resolved = {d.resolve() for d in dirs}
    if args.out is None or args.out.resolve() in resolved:
        raise ReportError(
            f"several compare sweeps ({len(dirs)} workloads): pass --out DIR, a dir of its own for the performance "
            f"profiles (each sweep's own report is written into its sweep dir)"
        )
    if len(resolved) < len(dirs):
        raise ReportError(f"a compare sweep is given twice in {[str(d) for d in dirs]}: one dir per workload")
    targets = list(args.target or [None] * len(dirs))
    if len(targets) != len(dirs):
        raise ReportError(
            f"--target given {len(targets)} time(s) for {len(dirs)} workloads: give it once per sweep dir, in their "
            f"order, or leave it out (each workload's target is then the worst final val/loss of its baseline arm)"
        )
    names = [d.name for d in dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in dirs]
    sections: dict[str, dict[str, Any]] = {}
    for name, d, target in zip(names, dirs, targets, strict=True):
        print(f"== workload {name} ({d})")
        own = {"sweep_dir": [d], "out": None, "target": None if target is None else [target]}
        # a fresh namespace per workload: the report fills in metric/select/baseline from each sweep's own runs
        sub = argparse.Namespace(**{**vars(args), **own, "metric": list(args.metric) if args.metric else None})
        sections[name] = run(sub)["compare"]
    tokens = {
        w: {arm: compare.workload_tokens(a.get("tokens_to_target") or {}) for arm, a in c["arms"].items()}
        for w, c in sections.items()
    }
    result: dict[str, Any] = {
        "sweep_dir": _dirs(args),
        "workloads": {w: str(d) for w, d in zip(names, dirs, strict=True)},
        "profile": compare.profiles(tokens),
        "compare": sections,
        "plots": [],
    }
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        plots.profile_plot(result["profile"], out / plots.PROFILE_PNG)
        result["plots"] = [plots.PROFILE_PNG]
    md = [f"# Performance profiles: {len(names)} workloads", ""]
    md += [f"- `{w}`: `{d}` (its own report: `{Path(d) / 'report.md'}`)" for w, d in result["workloads"].items()]
    md += ["", *compare.profile_markdown(result["profile"])]
    md += [f"![{p}]({p})" for p in result["plots"]]
    (out / "report.json").write_text(json.dumps(_json_safe(result), indent=2) + "\n")
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "report.html").write_text(compare.render_profiles(result, out))
    print("\n".join(compare.profile_markdown(result["profile"])).replace("`", ""))
    print(f"wrote {out / 'report.md'}, report.html, report.json" + "".join(f", {p}" for p in result["plots"]))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits; callers of main() get the code instead
        return int(e.code or 0)
    try:
        run(args)
    except ReportError as e:
        print(f"lmlab-report: error: {e}", file=sys.stderr)
        return 2
    return 0
