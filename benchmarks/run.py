"""Run throughput variants interleaved (A B C ... then reversed, repeated) and summarise them.

Each variant is a shell-free command template; every run is a fresh process. Contract for a variant's
command: its last stdout line that parses as JSON holds at least ``samples_per_sec``,
``tokens_per_sec``, ``pad_fraction`` and ``steps`` (measured from the end of step 3 to the end of the
last step, validation excluded) — as benchmarks/baselines.py prints with --json.

Extension point: ``VARIANTS`` below (name -> template), or ``--add NAME=TEMPLATE`` on the command line,
or ``run_benchmark(variants=...)`` from Python. Placeholders: {python} {model} {max_length}
{batch_size} {steps} {seed}.

After the per-variant table it prints ratios (COMPARISONS): each lmlab variant against the raw loop with the
same padding, and lmlab with length grouping against HF Trainer's defaults, with the issue's targets.

Example:
  PYTHONPATH=src python benchmarks/run.py --model tiny --steps 10 --repeats 2 --out logs/bench.json \
      --variants raw_dynamic,lmlab_dynamic
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_BASE = (
    "{python} benchmarks/baselines.py --model {model} --max-length {max_length} "
    "--batch-size {batch_size} --steps {steps} --seed {seed} --json --which "
)
_LMLAB = (
    "{python} benchmarks/lmlab_run.py --model {model} --max-length {max_length} "
    "--batch-size {batch_size} --steps {steps} --seed {seed} --json"
)
VARIANTS: dict[str, str] = {
    "raw_fixed": _BASE + "raw_fixed",
    "raw_dynamic": _BASE + "raw_dynamic",
    "hf_default": _BASE + "hf_default",
    "hf_grouped": _BASE + "hf_grouped",
    # lmlab through train.py and the Lightning Trainer; the number is the one lmlab logged in metrics.json.
    "lmlab_fixed": _LMLAB + " --fixed",
    "lmlab_dynamic": _LMLAB,
    "lmlab_grouped": _LMLAB + " --group-by-length",
}
# (numerator, denominator, target, max_length the target is for or None for any): each lmlab variant against the raw
# loop with the same padding, and grouping against HF Trainer's defaults (issue 5 targets: >= 0.97x and, at
# max_length 512, >= 1.3x; at shorter lengths BBC articles are truncated and there is little padding to remove).
COMPARISONS: list[tuple[str, str, float | None, int | None]] = [
    ("lmlab_fixed", "raw_fixed", 0.97, None),
    ("lmlab_dynamic", "raw_dynamic", 0.97, None),
    ("lmlab_grouped", "hf_default", 1.3, 512),
    ("lmlab_grouped", "hf_grouped", None, None),
    ("lmlab_grouped", "raw_dynamic", None, None),
    ("hf_default", "raw_fixed", None, None),
]
REQUIRED_KEYS = ("samples_per_sec", "tokens_per_sec", "pad_fraction", "steps")


def _last_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def run_one(
    name: str, template: str, params: dict[str, Any], timeout_s: float, required: Sequence[str] = REQUIRED_KEYS
) -> dict[str, Any]:
    """Run one command; its result is the last JSON line of its stdout holding every `required` key."""
    cmd = shlex.split(template.format(**params))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"variant": name, "error": f"timed out after {timeout_s:.0f}s", "cmd": cmd}
    rec: dict[str, Any] = {"variant": name, "cmd": cmd, "wall_s": time.perf_counter() - t0}
    result = _last_json(proc.stdout)
    if proc.returncode != 0 or result is None or any(k not in result for k in required):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        rec["error"] = f"exit {proc.returncode}, no valid JSON result line; last output: {tail[0][:300]}"
        return rec
    rec.update(result)
    rec["variant"] = name
    return rec


def run_benchmark(
    variants: dict[str, str], params: dict[str, Any], repeats: int, timeout_s: float = 900.0
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Interleave: round r runs the variants in order (r even) or reversed (r odd) to cancel drift."""
    names = list(variants)
    runs: list[dict[str, Any]] = []
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            rec = run_one(name, variants[name], params, timeout_s)
            rec["round"] = r
            runs.append(rec)
            status = rec.get("error") or f"{rec['samples_per_sec']:.2f} samples/s"
            print(f"[round {r}] {name}: {status}", file=sys.stderr, flush=True)
    return runs, summarize(runs, names)


def summarize(runs: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    for name in names:
        ok = [x for x in runs if x["variant"] == name and "error" not in x]
        if not ok:
            continue
        sps = [x["samples_per_sec"] for x in ok]
        summary[name] = {
            "runs": len(ok),
            "samples_per_sec_median": statistics.median(sps),
            "samples_per_sec_min": min(sps),
            "samples_per_sec_max": max(sps),
            "tokens_per_sec_median": statistics.median(x["tokens_per_sec"] for x in ok),
            # Real + padding tokens: the work actually computed. Two variants with the same padding rule can still
            # draw batches of different widths (different examples), which samples/s alone does not show.
            "padded_tokens_per_sec_median": statistics.median(
                x["tokens_per_sec"] / (1 - x["pad_fraction"]) for x in ok
            ),
            "pad_fraction_median": statistics.median(x["pad_fraction"] for x in ok),
        }
    return summary


def load_runs(paths: list[Path]) -> list[dict[str, Any]]:
    """The runs of earlier `--out` files; rounds are renumbered per file so per-round ratios stay within one
    invocation (both runs of a pair saw the same machine state)."""
    runs: list[dict[str, Any]] = []
    for i, path in enumerate(paths):
        for rec in json.loads(path.read_text())["runs"]:
            runs.append({**rec, "round": (i, rec["round"])})
    return runs


def markdown_table(summary: dict[str, dict[str, float]], reference: str | None) -> str:
    ref = summary.get(reference or "", {}).get("samples_per_sec_median")
    rows = [
        "| variant | samples/s (median) | min-max | tokens/s | pad fraction | vs " + (reference or "-") + " |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        rel = f"{s['samples_per_sec_median'] / ref:.2f}x" if ref else "-"
        rows.append(
            f"| {name} | {s['samples_per_sec_median']:.2f} | {s['samples_per_sec_min']:.2f}-"
            f"{s['samples_per_sec_max']:.2f} | {s['tokens_per_sec_median']:.0f} | "
            f"{s['pad_fraction_median']:.3f} | {rel} |"
        )
    return "\n".join(rows)


def per_round_ratios(runs: list[dict[str, Any]], num: str, den: str) -> list[float]:
    """samples/s of `num` over `den` within each round that has both: the two ran back to back, so slow machine
    drift mostly cancels, and the alternating order cancels a first-or-second-in-the-pair effect over rounds."""
    ratios = []
    for r in sorted({x["round"] for x in runs}, key=str):
        a = [x for x in runs if x["round"] == r and x["variant"] == num and "error" not in x]
        b = [x for x in runs if x["round"] == r and x["variant"] == den and "error" not in x]
        if a and b:
            ratios.append(a[0]["samples_per_sec"] / b[0]["samples_per_sec"])
    return ratios


def geomean_ci(ratios: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Geometric mean of ratios and its t confidence interval (computed on log-ratios; NaN bounds below n=2)."""
    from scipy import stats

    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(mean), math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def verdict(estimate: float, low: float, target: float | None) -> str:
    if target is None:
        return "-"
    if estimate < target:
        return f">= {target}: NOT met"
    return f">= {target}: met" + (" (95% CI above it)" if low >= target else " (95% CI reaches below it)")


def ratio_table(runs: list[dict[str, Any]], summary: dict[str, dict[str, float]]) -> str:
    """Ratios of samples/s: of the medians, and the geometric mean of the per-round ratios with its 95% CI (the
    estimate the target is judged on: each round runs both variants back to back). Then the ratios of real
    tokens/s and of padded tokens/s: for two variants with the same padding rule, the padded-token ratio corrects
    for one of them having drawn wider batches."""
    rows = [
        "| comparison | samples/s: ratio of medians | per-round ratios: geometric mean [95% CI] (n, min-max) | "
        "real tokens/s | padded tokens/s | target |",
        "|---|---|---|---|---|---|",
    ]
    for num, den, target, at_length in COMPARISONS:
        if num not in summary or den not in summary:
            continue
        lengths = {x.get("max_length") for x in runs if x["variant"] == num and "error" not in x}
        if at_length is not None and lengths != {at_length}:
            target = None
        of_medians = summary[num]["samples_per_sec_median"] / summary[den]["samples_per_sec_median"]
        ratios = per_round_ratios(runs, num, den)
        if ratios:
            gm, low, high = geomean_ci(ratios)
            per_round = (
                f"{gm:.3f} [{low:.3f}, {high:.3f}] (n={len(ratios)}, {min(ratios):.3f}-{max(ratios):.3f})"
                if len(ratios) > 1
                else f"{gm:.3f} (n=1)"
            )
            judged = verdict(gm, low if len(ratios) > 1 else -math.inf, target)
        else:
            per_round, judged = "-", verdict(of_medians, -math.inf, target)
        real = summary[num]["tokens_per_sec_median"] / summary[den]["tokens_per_sec_median"]
        padded = summary[num]["padded_tokens_per_sec_median"] / summary[den]["padded_tokens_per_sec_median"]
        rows.append(f"| {num} / {den} | {of_medians:.3f} | {per_round} | {real:.3f} | {padded:.3f} | {judged} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated names to run, in order "
        "(default: all; the hf_* ones need the `bench` extra: accelerate, psutil)",
    )
    p.add_argument("--add", action="append", default=[], metavar="NAME=TEMPLATE", help="extra variant")
    p.add_argument("--model", default="tiny", choices=("tiny", "minilm"))
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout-s", type=float, default=900.0, help="per run")
    p.add_argument("--reference", default="raw_fixed", help="variant the table's ratio column divides by")
    p.add_argument("--out", type=Path, default=None, help="write {params, runs, summary} JSON here")
    p.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        default=None,
        metavar="FILE",
        help="run nothing: print the tables of earlier --out files (several: their runs pooled)",
    )
    args = p.parse_args(argv)
    if args.from_json:
        runs = load_runs(args.from_json)
        summary = summarize(runs, list(dict.fromkeys(r["variant"] for r in runs)))
        print(markdown_table(summary, args.reference))
        print()
        print(ratio_table(runs, summary))
        return 0

    variants = dict(VARIANTS)
    for item in args.add:
        name, sep, template = item.partition("=")
        if not sep or not name or not template:
            p.error(f"--add expects NAME=TEMPLATE, got {item!r}")
        variants[name] = template
    wanted = [v for v in args.variants.split(",") if v] + [i.partition("=")[0] for i in args.add]
    unknown = [v for v in wanted if v not in variants]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; known: {sorted(variants)} (add one with --add NAME=TEMPLATE)")
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    selected = {v: variants[v] for v in dict.fromkeys(wanted)}
    params = {
        "python": sys.executable,
        "model": args.model,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "seed": args.seed,
    }
    runs, summary = run_benchmark(selected, params, args.repeats, args.timeout_s)
    print(markdown_table(summary, args.reference))
    print()
    print(ratio_table(runs, summary))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"params": params, "runs": runs, "summary": summary}, indent=2))
    failed = [r for r in runs if "error" in r]
    for r in failed:
        print(f"FAILED {r['variant']} (round {r['round']}): {r['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
