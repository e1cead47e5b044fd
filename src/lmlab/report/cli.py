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

CSV_COLUMNS = [
    "group", "n", "n_failed", "mean", "std", "ci95_low", "ci95_high", "min", "max",
    "diff", "diff_ci95_low", "diff_ci95_high", "p_paired_t", "p_permutation", "p_holm",
]
GROUPS_PNG = "report_groups.png"
EXPMAX_PNG = "report_expected_max.png"
MIN_CONFIGS_FOR_CURVE = 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmlab-report",
        description="Statistics report over a Hydra multirun (sweep) directory: per-group mean/std/CI, "
        "honest selection (val) and reporting (test), baseline comparisons with Holm correction, "
        "expected max validation score vs. number of configurations (Dodge et al. 2019).",
    )
    p.add_argument("sweep_dir", type=Path, help="Hydra multirun dir holding job dirs (0/, 1/, ...)")
    p.add_argument("--metric", default=None,
                   help="metric reported per group (default: the test twin of the runs' task monitor "
                   "meta/monitor, e.g. test/loss; runs without one: test/f1_macro)")
    p.add_argument("--select", default=None,
                   help="metric the best group is chosen on, by group mean (default: the runs' task monitor "
                   "meta/monitor, e.g. val/loss; runs without one: val/f1_macro)")
    p.add_argument("--select-mode", choices=["auto", "max", "min"], default="auto",
                   help="whether higher or lower --select is better; auto = the runs' meta/mode when --select is "
                   "their monitor, else (older runs) min for names containing 'loss' and max otherwise")
    p.add_argument("--baseline", help='baseline group as overrides, e.g. "optimizer=adamw optimizer.lr=3e-5"')
    p.add_argument("--seed-key", default="seed",
                   help="override key that varies between repeats (default: %(default)s)")
    p.add_argument("--ci", choices=["t", "bootstrap"], default="t", help="95%% CI of group means")
    p.add_argument("--paired-bootstrap", nargs=2, metavar=("A", "B"),
                   help="paired bootstrap over test examples (test_predictions.csv) of macro-F1(A) - "
                   "macro-F1(B); A and B are group strings or job dirs")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--wandb", metavar="PROJECT",
                   help="log table and plots to this W&B project (also done when a W&B run is active)")
    return p


def _mode(metric: str, mode: str, task: dict[str, Any] | None) -> str:
    if mode != "auto":
        return mode
    if task is not None and task["monitor"] == metric:
        return task["mode"]
    # Runs written before meta/mode existed, or a --select other than the monitor: today's name rule.
    return "min" if "loss" in metric else "max"


def task_meta(jobs: list[Job]) -> dict[str, Any] | None:
    """The task the runs recorded (meta/task, meta/monitor, meta/mode); None for runs older than that record."""
    found = {(m.get("meta/task"), m.get("meta/monitor"), m.get("meta/mode")) for j in jobs if (m := j.metrics)}
    found.discard((None, None, None))
    if len(found) > 1:
        raise ReportError(f"the jobs come from different tasks or monitors {sorted(map(str, found))}; report each "
                          f"task's runs separately")
    if not found:
        return None
    name, monitor, mode = found.pop()
    return {"task": name, "monitor": monitor, "mode": mode}


def _values(jobs: list[Job], metric: str) -> tuple[list[float], list[str | None]]:
    vals, seeds = [], []
    for j in jobs:
        v = (j.metrics or {}).get(metric)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals.append(float(v))
            seeds.append(j.seed)
    return vals, seeds


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
    a = _job_or_group(a_arg, args.sweep_dir, groups, args.seed_key)
    b = _job_or_group(b_arg, args.sweep_dir, groups, args.seed_key)
    if isinstance(a, Group) and isinstance(b, Group):
        fa = {j.seed: j for j in a.finished}
        fb = {j.seed: j for j in b.finished}
        common = [s for s in fa if s in fb]
        if common:
            pairs = [(fa[s].dir, fb[s].dir) for s in common]
        elif len(fa) == 1 and len(fb) == 1:
            pairs = [(next(iter(fa.values())).dir, next(iter(fb.values())).dir)]
        else:
            raise ReportError(f"--paired-bootstrap: groups {a.name!r} and {b.name!r} share no finished seed; "
                              f"pass two job dirs instead")
    else:
        a_dirs = [j.dir for j in a.finished] if isinstance(a, Group) else [j.dir for j in a]
        b_dirs = [j.dir for j in b.finished] if isinstance(b, Group) else [j.dir for j in b]
        if len(a_dirs) != 1 or len(b_dirs) != 1:
            raise ReportError("--paired-bootstrap: mix of a group with several runs and a job dir; "
                              "pass two job dirs or two group strings")
        pairs = [(a_dirs[0], b_dirs[0])]

    frames = [(_read_predictions(da), _read_predictions(db)) for da, db in pairs]
    ref = frames[0][0]
    for (fa_, fb_), (da, db) in zip(frames, pairs, strict=True):
        for df, d in ((fa_, da), (fb_, db)):
            if not df.index.equals(ref.index):
                raise ReportError(f"--paired-bootstrap: {d}/test_predictions.csv has other example ids than "
                                  f"{pairs[0][0]}/test_predictions.csv; both must predict the same test set")
            if not (df["label"] == ref["label"]).all():
                raise ReportError(f"--paired-bootstrap: {d}/test_predictions.csv has other gold labels than "
                                  f"{pairs[0][0]}/test_predictions.csv for the same ids")
    cols = [ref["label"]] + [f["pred"] for pair in frames for f in pair]
    classes, codes = stats.encode_labels(*cols)
    y = codes[0]
    preds = codes[1:]
    res = stats.paired_bootstrap_f1(y, preds[0::2], preds[1::2], len(classes))
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


def analyze(args: argparse.Namespace) -> dict[str, Any]:
    jobs = find_jobs(args.sweep_dir)
    finished = [j for j in jobs if j.finished]
    if not finished:
        states = ", ".join(f"{j.dir.name}: {j.status}" for j in jobs)
        raise ReportError(f"{args.sweep_dir} has no finished jobs (status completed with metrics.json); "
                          f"found {states}")
    task = task_meta(finished)
    if args.select is None:
        args.select = task["monitor"] if task else "val/f1_macro"
    if args.metric is None:
        args.metric = ("test/" + task["monitor"].split("/", 1)[-1]) if task else "test/f1_macro"
    known = scalar_metrics(finished)
    for opt, name in (("--metric", args.metric), ("--select", args.select)):
        if name not in known:
            raise ReportError(f"unknown metric {name!r} for {opt}; metrics found: {', '.join(known)}")
    groups = group_jobs(jobs, args.seed_key)
    warnings = consistency_warnings(jobs)
    for j in jobs:
        if j.status == "completed" and j.metrics is None:
            warnings.append(f"job {j.dir.name} is marked completed but has no metrics.json; left out")
        elif j.finished and args.metric not in j.metrics:
            warnings.append(f"job {j.dir.name} has no {args.metric!r}; left out of that metric")

    baseline = match_group(args.baseline, groups, args.seed_key, "--baseline") if args.baseline else None
    if baseline is not None and not _values(baseline.finished, args.metric)[0]:
        raise ReportError(f"--baseline group {baseline.name!r} has no finished job with {args.metric!r}")

    rows: list[dict[str, Any]] = []
    comparisons: list[stats.Comparison | None] = []
    base_vals, base_seeds = _values(baseline.finished, args.metric) if baseline else ([], [])
    for g in groups:
        vals, seeds = _values(g.finished, args.metric)
        s = stats.summarize(vals, args.ci)
        row: dict[str, Any] = dict.fromkeys(CSV_COLUMNS, float("nan"))
        row |= {
            "group": g.name, "n": s.n, "n_failed": g.n_failed, "mean": s.mean, "std": s.std,
            "ci95_low": s.ci_low, "ci95_high": s.ci_high, "min": s.min, "max": s.max,
        }
        cmp = None
        if baseline is not None and g is not baseline and vals:
            cmp = stats.compare(vals, seeds, base_vals, base_seeds)
            row.update(diff=cmp.diff, diff_ci95_low=cmp.diff_ci_low, diff_ci95_high=cmp.diff_ci_high,
                       p_paired_t=cmp.p_t, p_permutation=cmp.p_permutation)
        comparisons.append(cmp)
        rows.append(row)
    p_holm = stats.holm([c.p_t if c else np.nan for c in comparisons])
    for row, c, ph in zip(rows, comparisons, p_holm, strict=True):
        if c is not None:
            row["p_holm"] = ph

    # Honest selection: best group by the mean of the *validation* metric, reported on the test metric.
    mode = _mode(args.select, args.select_mode, task)
    sel_means = {g.name: float(np.mean(v)) for g in groups if (v := _values(g.finished, args.select)[0])}
    if not sel_means:
        raise ReportError(f"no finished job has {args.select!r}; pick another --select")
    best = (max if mode == "max" else min)(sel_means, key=sel_means.get)
    best_row = next(r for r in rows if r["group"] == best)
    selection = {
        "select_metric": args.select, "select_mode": mode, "report_metric": args.metric,
        "group": best, "select_mean": sel_means[best],
        "report_mean": best_row["mean"], "report_std": best_row["std"],
        "report_ci95_low": best_row["ci95_low"], "report_ci95_high": best_row["ci95_high"],
        "n": best_row["n"],
    }

    expected_max = None
    notes: list[str] = []
    if len(sel_means) >= MIN_CONFIGS_FOR_CURVE:
        scores = np.array(list(sel_means.values()))
        sign = 1.0 if mode == "max" else -1.0  # expected *min* of a loss = -(expected max of -loss)
        em, es = stats.expected_max_curve(sign * scores)
        expected_max = {
            "metric": args.select, "mode": mode, "n_configs": int(scores.size),
            "n": list(range(1, scores.size + 1)), "expected": (sign * em).tolist(), "std": es.tolist(),
            "observed_min": float(scores.min()), "observed_max": float(scores.max()),
        }
    else:
        # Not a problem with the sweep, so a note rather than a warning on stderr.
        notes.append(f"expected-max curve skipped: {len(sel_means)} configuration(s) with "
                     f"{args.select!r}, needs at least {MIN_CONFIGS_FOR_CURVE}")

    result: dict[str, Any] = {
        "sweep_dir": str(args.sweep_dir), "metric": args.metric, "select": args.select,
        "seed_key": args.seed_key, "ci": args.ci,
        "n_jobs": len(jobs), "n_finished": len(finished), "n_failed": sum(j.status == "failed" for j in jobs),
        "baseline": baseline.name if baseline else None,
        "constant_overrides": groups[0].constant if groups else [],
        "groups": rows,
        "comparisons": {
            r["group"]: {"test": c.test, "paired": c.paired}
            for r, c in zip(rows, comparisons, strict=True) if c
        },
        "selection": selection, "expected_max": expected_max, "warnings": warnings, "notes": notes,
        "optuna": read_optuna_results(args.sweep_dir), "plots": [],
    }
    if args.paired_bootstrap:
        result["paired_bootstrap"] = paired_bootstrap(args, groups)
    return result


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(result: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(result["groups"]).reindex(columns=CSV_COLUMNS)


def write_plots(result: dict[str, Any], out: Path) -> list[str]:
    # Figure without pyplot renders PNGs through Agg and leaves the caller's backend and figures alone
    # (main() may run inside a training script or a notebook).
    from matplotlib.figure import Figure

    written = []
    df = _table(result)
    fig = Figure(figsize=(8, 0.5 * len(df) + 1.5))
    ax = fig.subplots()
    y = np.arange(len(df))
    err = np.vstack([df["mean"] - df["ci95_low"], df["ci95_high"] - df["mean"]]).clip(min=0)
    ax.errorbar(df["mean"], y, xerr=np.nan_to_num(err), fmt="o", capsize=4)
    ax.set_yticks(y, df["group"])
    ax.invert_yaxis()
    sel = result["selection"]["group"]
    for label in ax.get_yticklabels():
        if label.get_text() == sel:
            label.set_fontweight("bold")
    if result["baseline"]:
        base_mean = df.loc[df["group"] == result["baseline"], "mean"].iloc[0]
        ax.axvline(base_mean, color="gray", linestyle="--", linewidth=1, label="baseline mean")
        ax.legend(loc="best")
    ax.set_xlabel(f"{result['metric']} (mean, 95% CI)")
    ax.set_title(f"{result['metric']} per group (bold: selected on {result['select']})")
    fig.tight_layout()
    fig.savefig(out / GROUPS_PNG, dpi=100)
    written.append(GROUPS_PNG)

    em = result["expected_max"]
    if em:
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        n, e, s = np.array(em["n"]), np.array(em["expected"]), np.array(em["std"])
        ax.plot(n, e, marker="o", label="expected")
        # Dodge et al. clip the ±std band to the observed range: the expectation cannot leave it.
        ax.fill_between(n, np.maximum(e - s, em["observed_min"]), np.minimum(e + s, em["observed_max"]),
                        alpha=0.2, label="± std")
        best = em["observed_max"] if em["mode"] == "max" else em["observed_min"]
        ax.axhline(best, color="gray", linestyle="--", linewidth=1, label="best observed")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(loc="lower right" if em["mode"] == "max" else "upper right")
        ax.set_xlabel("number of configurations tried")
        ax.set_ylabel(f"expected {'best' if em['mode'] == 'max' else 'lowest'} {em['metric']}")
        ax.set_title("Expected validation performance (Dodge et al. 2019)")
        fig.tight_layout()
        fig.savefig(out / EXPMAX_PNG, dpi=100)
        written.append(EXPMAX_PNG)
    return written


def render_markdown(result: dict[str, Any]) -> str:
    sel = result["selection"]
    ci = "Student t" if result["ci"] == "t" else "BCa bootstrap"
    better = "higher" if sel["select_mode"] == "max" else "lower"
    lines = [
        f"# Sweep report: `{result['sweep_dir']}`",
        "",
        (f"{result['n_jobs']} jobs, {result['n_finished']} finished, {result['n_failed']} failed. "
        f"Groups = overrides without `{result['seed_key']}`; CI: {ci} 95% of the mean."),
        "",
        *([f"Overrides shared by every job (left out of group names): `{' '.join(result['constant_overrides'])}`",
           ""] if result.get("constant_overrides") else []),
        "## Selection",
        "",
        (f"The best group was chosen on **{sel['select_metric']}** (group mean, {better} is better) and is "
        f"reported on **{sel['report_metric']}**; the test metric played no part in the choice."),
        "",
        f"- selected: `{sel['group']}` ({sel['select_metric']} mean {_fmt(sel['select_mean'])})",
        (f"- {sel['report_metric']}: {_fmt(sel['report_mean'])} ± {_fmt(sel['report_std'])} (std), "
        f"95% CI [{_fmt(sel['report_ci95_low'])}, {_fmt(sel['report_ci95_high'])}], n={sel['n']}"),
        "",
        f"## {result['metric']} per group",
        "",
        "| " + " | ".join(CSV_COLUMNS) + " |",
        "|" + "---|" * len(CSV_COLUMNS),
    ]
    for row in _table(result).to_dict("records"):
        lines.append("| " + " | ".join(_fmt(row[c]) for c in CSV_COLUMNS) + " |")
    if result["baseline"]:
        paired = [g for g, c in result["comparisons"].items() if c["paired"]]
        welch = [g for g, c in result["comparisons"].items() if not c["paired"]]
        lines += [
            "",
            (f"Baseline: `{result['baseline']}`. `diff` = group mean − baseline mean. Groups that ran the "
            "same seeds as the baseline are compared with a paired t-test and a paired permutation test "
            "(diff CI: t CI of the paired differences); the others with Welch's t-test and an independent "
            "permutation test (Welch CI); `p_paired_t` holds that t-test's p-value. `p_holm`: Holm "
            f"correction of the t-test p-values across all {len(result['comparisons'])} comparisons with "
            "the baseline."),
        ]
        lines.append("")
        if paired:
            lines.append(f"- paired: {', '.join(f'`{g}`' for g in paired)}")
        if welch:
            lines.append(f"- Welch (seeds differ from the baseline's): {', '.join(f'`{g}`' for g in welch)}")
        lines += ["", ("With few seeds the exact permutation p-value cannot be small: with n paired seeds its "
                  "floor is 2/2^n (0.25 for 3 seeds). Read it next to the t-test, not instead of it.")]
    em = result["expected_max"]
    if em:
        kind = "max" if em["mode"] == "max" else "min"
        lines += [
            "",
            "## Expected best validation score vs. configurations tried",
            "",
            (f"Dodge et al. (2019): expected {kind} of {em['metric']} (group means) over n configurations "
            f"drawn with replacement from the {em['n_configs']} tried."),
            "",
            "| n | expected | std |",
            "|---|---|---|",
        ]
        rows = zip(em["n"], em["expected"], em["std"], strict=True)
        lines += [f"| {n} | {_fmt(e)} | {_fmt(s)} |" for n, e, s in rows]
    pb = result.get("paired_bootstrap")
    if pb:
        lines += [
            "",
            "## Paired bootstrap over test examples",
            "",
            (f"macro-F1(A) − macro-F1(B), A = `{pb['a']}`, B = `{pb['b']}`, {pb['n_examples']} examples, "
            f"{len(pb['pairs'])} run pair(s), {pb['n_resamples']} resamples: "
            f"{_fmt(pb['f1_macro_a'])} − {_fmt(pb['f1_macro_b'])} = **{_fmt(pb['diff'])}**, "
            f"95% CI [{_fmt(pb['diff_ci95_low'])}, {_fmt(pb['diff_ci95_high'])}], "
            f"p = {_fmt(pb['p_value'])}."),
        ]
    if result["optuna"]:
        lines += ["", "## Optuna", "", "optimization_results.yaml (chosen on the sweep's objective):", "",
                  "```", json.dumps(result["optuna"], indent=2, default=str), "```"]
    if result["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in result["warnings"]]
    if result["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    if result["plots"]:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in result["plots"]]
    return "\n".join(lines) + "\n"


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
    cols = ["group", "n", "n_failed", "mean", "std", "ci95_low", "ci95_high", "diff", "p_paired_t", "p_holm"]
    for c in cols:
        # Group strings are what users paste into --baseline: never wrap them.
        t.add_column(c, justify="left" if c == "group" else "right", no_wrap=c == "group")
    for row in _table(result).to_dict("records"):
        t.add_row(*(_fmt(row[c]) for c in cols), style="bold" if row["group"] == sel else None)
    # Wide enough for the longest group plus the number columns (a log file has no terminal width).
    longest = max((len(str(r["group"])) for r in result["groups"]), default=0)
    Console(width=max(120, Console().width, longest + 100)).print(t)


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
        run = wandb.init(project=project, job_type="report", name=f"report-{out.name}",
                         dir=os.environ.get("WANDB_DIR", str(out)), config=config)
    data = {"report/table": wandb.Table(dataframe=_table(result))}
    data.update({f"report/{Path(p).stem}": wandb.Image(str(out / p)) for p in result["plots"]})
    run.log(data)
    run.summary.update({f"report/selection/{k}": v for k, v in _json_safe(result["selection"]).items()
                        if v is not None})
    run_id = run.id
    if own:
        run.finish()
    return run_id


def run(args: argparse.Namespace) -> dict[str, Any]:
    result = analyze(args)
    out = args.sweep_dir
    if not args.no_plots:
        result["plots"] = write_plots(result, out)
    _table(result).to_csv(out / "report.csv", index=False, float_format="%.17g")
    (out / "report.json").write_text(json.dumps(_json_safe(result), indent=2) + "\n")
    (out / "report.md").write_text(render_markdown(result))
    for w in result["warnings"]:
        print(f"WARNING: {w}", file=sys.stderr)
    print_table(result)
    pb = result.get("paired_bootstrap")
    if pb:
        print(f"paired bootstrap {pb['a']!r} vs {pb['b']!r}: diff {_fmt(pb['diff'])} "
              f"[{_fmt(pb['diff_ci95_low'])}, {_fmt(pb['diff_ci95_high'])}], p={_fmt(pb['p_value'])}")
    wandb_id = log_wandb(result, out, args.wandb)
    if wandb_id:
        print(f"logged to W&B run {wandb_id}")
    print(f"wrote {out / 'report.md'}, report.csv, report.json" + "".join(f", {p}" for p in result["plots"]))
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
