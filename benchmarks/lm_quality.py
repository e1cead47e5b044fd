"""The language-model targets: the default LM recipe against classical n-gram LMs, and a SmolLM2 fine-tune against
its own zero-shot evaluation (README, "Language models: measured").

    python benchmarks/lm_quality.py recipe            # python train.py task=causal_lm, timed, vs n-gram bpb
    python benchmarks/lm_quality.py smollm2 --steps 40 --max-length 128 --batch-size 4 \
        dataset.max_samples.val=20 dataset.max_samples.test=60   # zero-shot test ppl, a short fine-tune, again
    python benchmarks/lm_quality.py recipe --from-run DIR --from-run DIR2   # score finished runs instead
    python benchmarks/lm_quality.py ablate --seeds 1 --variant today= --variant 'muon=optimizer=muon'  # a speedrun log
Exit status 1 when a target is missed. recipe: every seed's run (default seeds 1,2,3) within --max-minutes of wall
time, and the upper bound of the 95 % t interval of their test bpb below the best n-gram's test bpb, the n-grams
(byte and word Kneser-Ney, order chosen on val) fitted on the split rebuilt from the runs' own resolved dataset
config (resolved_config.json; its data fingerprint must equal the one in the runs' manifest.json).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))


def run(script: str, log_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """One train.py / eval.py run in a fresh process: its metrics, wall minutes and CPU minutes."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / script), f"paths.log_dir={log_dir}", *overrides])
    minutes = (time.perf_counter() - start) / 60
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{script} {' '.join(overrides)} failed (exit {result.returncode})")
    task = "eval" if script == "eval.py" else "train"
    metrics_file = max((log_dir / task / "runs").glob("*/metrics.json"), key=lambda p: p.stat().st_mtime)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / 60
    return {
        "metrics": json.loads(metrics_file.read_text()),
        "minutes": round(minutes, 2),
        "cpu_minutes": round(cpu, 2),
        "run_dir": str(metrics_file.parent),
    }


def run_texts(run_dir: Path) -> tuple[dict[str, list[str]], str]:
    """The train/val/test texts of a finished run, rebuilt from its resolved dataset config (resolved_config.json:
    the same source, dedupe mode, split seed and sample caps), and their data fingerprint. Refused when the
    fingerprint differs from the one the run recorded in manifest.json: the n-grams must see the run's split."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    dataset: dict[str, Any] = {}  # resolved_config.json holds dotted keys: dataset.a.b -> {"a": {"b": ...}}
    for key, value in json.loads((run_dir / "resolved_config.json").read_text())["config"].items():
        if key.startswith("dataset."):
            *parents, leaf = key.split(".")[1:]
            node = dataset
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    datamodule = instantiate(OmegaConf.create(dataset))
    datamodule.task_reads_labels = False  # as the LM tasks set it (lmlab.tasks: connect)
    splits = datamodule.load()
    recorded = json.loads((run_dir / "manifest.json").read_text())["data"]["fingerprint"]
    if datamodule.data_fingerprint != recorded:
        raise SystemExit(
            f"{run_dir}: its dataset config rebuilt data {datamodule.data_fingerprint}, but the run trained on "
            f"{recorded} (manifest.json); the n-grams would be scored on another split"
        )
    return {s: [ex.text for ex in splits[s]] for s in ("train", "val", "test")}, recorded


def ngram_baselines(texts: dict[str, list[str]], max_order: int, word_orders: list[int] | None) -> dict[str, Any]:
    """Byte- and word-level Kneser-Ney (benchmarks/ngram.py) fitted on the run's train split; each family's order
    is chosen on val, and its test bpb is the number compared."""
    from benchmarks.ngram import best_baselines

    return best_baselines(texts, max_order=max_order, word_orders=word_orders)


def finished_run(run_dir: Path) -> dict[str, Any]:
    """An earlier run's metrics and its start-to-end minutes (status.json), instead of training again."""
    from datetime import datetime

    status = json.loads((run_dir / "status.json").read_text())
    if status.get("status") != "completed":
        raise SystemExit(f"{run_dir} did not complete: {status}")
    span = datetime.fromisoformat(status["ended"]) - datetime.fromisoformat(status["started"])
    return {
        "metrics": json.loads((run_dir / "metrics.json").read_text()),
        "minutes": round(span.total_seconds() / 60, 2),
        "cpu_minutes": None,
        "run_dir": str(run_dir),
    }


def recipe(args: argparse.Namespace, log_dir: Path) -> tuple[dict[str, Any], bool]:
    """The speedrun target (issue 25): `train.py task=causal_lm` on each seed, timed from start to exit, against
    the best n-gram on the same split. It passes when the upper bound of the 95 % t interval of test bpb over the
    seeds is below the best n-gram's test bpb and every run took at most --max-minutes."""
    from lmlab.report.stats import mean_ci

    if args.from_run:
        runs = [finished_run(Path(d)) for d in args.from_run]
    else:
        runs = [run("train.py", log_dir, ["task=causal_lm", f"seed={s}", *args.overrides]) for s in args.seeds]
    texts, fingerprint = run_texts(Path(runs[0]["run_dir"]))
    for r in runs[1:]:  # every seed trained on the same split (dataset.split_seed is not the run's seed)
        other = json.loads((Path(r["run_dir"]) / "manifest.json").read_text())["data"]["fingerprint"]
        if other != fingerprint:
            raise SystemExit(f"{r['run_dir']} trained on data {other}, {runs[0]['run_dir']} on {fingerprint}")
    ngrams = ngram_baselines(texts, args.max_order, args.word_orders)
    best_name, best = min(
        ((f"{k} order {v['best']['order']}", v["best"]["test_bpb"]) for k, v in ngrams.items() if "best" in v),
        key=lambda kv: kv[1],
    )
    import numpy as np

    bpb = np.array([r["metrics"]["test/bpb"] for r in runs])
    mean = float(bpb.mean())
    low, high = mean_ci(bpb) if len(bpb) > 1 else (float("nan"), float("nan"))
    minutes = [r["minutes"] for r in runs]
    seeds = [json.loads((Path(r["run_dir"]) / "manifest.json").read_text())["seed"] for r in runs]
    recipe_name = "lmlab task=causal_lm " + (" ".join(args.overrides) or "(the default recipe)")
    rows = [
        (
            f"{'lmlab run ' + Path(r['run_dir']).name if args.from_run else recipe_name}, seed {s}",
            r["metrics"]["test/bpb"],
            r["metrics"]["val/bpb"],
        )
        for s, r in zip(seeds, runs)
    ]
    rows += [(f"byte KN order {o}", v["test_bpb"], v["val_bpb"]) for o, v in ngrams["byte_kn"]["by_order"].items()]
    rows += [
        (f"word KN order {o} (+ byte spelling)", v["test_bpb"], v["val_bpb"])
        for o, v in ngrams["word_kn"]["by_order"].items()
    ]
    print(
        f"\ndata {fingerprint} (the runs' resolved dataset config: {len(texts['train'])} train, "
        f"{len(texts['val'])} val, {len(texts['test'])} test documents)"
    )
    print(f"{'model':<70} {'test bpb':>9} {'val bpb':>9}")
    for name, test, val in rows:
        print(f"{name:<70} {test:>9.4f} {val:>9.4f}")
    below = bool(high < best) if len(bpb) > 1 else bool(mean < best)
    in_time = max(minutes) <= args.max_minutes
    ok = below and in_time and len(bpb) >= args.min_seeds
    print(
        f"\nlmlab over {len(bpb)} seed(s): test bpb {mean:.4f}, 95 % CI [{low:.4f}, {high:.4f}]; wall minutes "
        f"{', '.join(f'{m:.2f}' for m in minutes)}\nbest n-gram (chosen on val): {best_name} {best:.4f}; "
        f"upper bound below it: {below}; every run within {args.max_minutes} min: {in_time}; "
        f"target met: {ok}" + ("" if len(bpb) >= args.min_seeds else f" (needs >= {args.min_seeds} seeds)")
    )
    result = {
        "runs": runs,
        "data_fingerprint": fingerprint,
        "test_bpb": {"mean": mean, "ci95": [low, high], "n": len(bpb)},
        "minutes": minutes,
        "ngrams": ngrams,
        "best_ngram": {"name": best_name, "test_bpb": best},
        "ok": ok,
    }
    return result, ok


def ablate(args: argparse.Namespace, log_dir: Path) -> tuple[dict[str, Any], bool]:
    """A speedrun log: `train.py task=causal_lm seed=<first seed>` once per --variant ("NAME=override override";
    the first is the reference, usually today's recipe with no overrides), each in a fresh process timed from start
    to exit. Prints test bpb, its delta against the reference, wall minutes and training tokens/s per variant.
    One seed each: a screen for what to confirm over seeds with `recipe`, not a comparison."""
    seed = args.seeds[0]
    rows = []
    for spec in args.variant:
        name, _, overrides = spec.partition("=")
        extra = overrides.split()
        r = run("train.py", log_dir / name, ["task=causal_lm", f"seed={seed}", *extra, *args.overrides])
        rows.append({"name": name, "overrides": extra, **r})
    ref = rows[0]["metrics"]["test/bpb"]
    print(f"\n{f'variant (seed {seed})':<34} {'test bpb':>9} {'delta':>8} {'minutes':>8} {'tok/s':>8}  overrides")
    for r in rows:
        m = r["metrics"]
        print(
            f"{r['name']:<34} {m['test/bpb']:>9.4f} {m['test/bpb'] - ref:>+8.4f} {r['minutes']:>8.2f} "
            f"{m.get('perf/train_tokens_per_sec') or float('nan'):>8.0f}  {' '.join(r['overrides']) or '-'}"
        )
    return {"seed": seed, "variants": rows}, True


def smollm2(args: argparse.Namespace, log_dir: Path) -> tuple[dict[str, Any], bool]:
    data = [f"dataset.max_length={args.max_length}", "dataset.eval_batch_size=8"]
    zero = (
        finished_run(Path(args.zero_shot_run))
        if args.zero_shot_run
        else run("eval.py", log_dir, ["task=causal_lm", "model=smollm2", *data, *args.overrides])
    )
    tuned = run(
        "train.py",
        log_dir,
        [
            "task=causal_lm",
            "model=smollm2",
            "optimizer=adamw",  # fine-tuning: the task's default (Muon) is its from-scratch recipe
            *data,
            f"dataset.batch_size={args.batch_size}",
            f"trainer.max_steps={args.steps}",
            f"optimizer.lr={args.lr}",
            "trainer.val_check_interval=null",
            "export_model=false",
            *args.overrides,
        ],
    )
    z, t = zero["metrics"], tuned["metrics"]
    print(f"\nSmolLM2-135M-Instruct (GGUF Q4_1 -> fp32), BBC test split, {args.max_length}-token blocks")
    print(f"zero-shot : test ppl {z['test/ppl']:.3f}  bpb {z['test/bpb']:.4f}  ({zero['minutes']} min)")
    print(
        f"fine-tuned: test ppl {t['test/ppl']:.3f}  bpb {t['test/bpb']:.4f}  ({tuned['minutes']} min, "
        f"{args.steps} steps of {args.batch_size} x {args.max_length} tokens, lr {args.lr})"
    )
    ok = t["test/ppl"] < z["test/ppl"]
    return {"zero_shot": zero, "fine_tuned": tuned, "steps": args.steps, "lr": args.lr, "ok": ok}, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["recipe", "ablate", "smollm2"])
    parser.add_argument(
        "--variant",
        action="append",
        default=None,
        help='ablate: "NAME=override override" (repeat; the first is the reference, e.g. today=)',
    )
    parser.add_argument("--max-minutes", type=float, default=10.0)
    parser.add_argument("--max-order", type=int, default=24, help="byte KN orders 1..N (chosen on val)")
    parser.add_argument("--steps", type=int, default=60, help="smollm2: fine-tuning steps")
    parser.add_argument("--lr", type=float, default=1e-4, help="smollm2: fine-tuning lr")
    parser.add_argument("--max-length", type=int, default=256, help="smollm2: block length")
    parser.add_argument("--batch-size", type=int, default=8, help="smollm2: blocks per step")
    parser.add_argument(
        "--seeds",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 2, 3],
        help="recipe: one run per seed (default 1,2,3)",
    )
    parser.add_argument("--min-seeds", type=int, default=3, help="recipe: the target needs this many seeds")
    parser.add_argument(
        "--word-orders",
        type=lambda v: [int(x) for x in v.split(",")],
        default=None,
        help="recipe: word KN orders (default 1..20)",
    )
    parser.add_argument(
        "--from-run",
        action="append",
        default=None,
        help="recipe: score this finished run dir instead of training (repeat for several seeds)",
    )
    parser.add_argument("--zero-shot-run", default=None, help="smollm2: reuse this finished eval run dir")
    parser.add_argument("--log-dir", default=None, help="where the runs go (default: a temporary dir)")
    parser.add_argument("--json", default=None, help="write the numbers here")
    parser.add_argument("overrides", nargs="*", help="extra train.py/eval.py overrides")
    args = parser.parse_intermixed_args(argv)  # overrides may follow the options
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="lmlab-lm-quality-"))
    result, ok = {"recipe": recipe, "ablate": ablate, "smollm2": smollm2}[args.which](args, log_dir)
    result.update(date=time.strftime("%Y-%m-%d"), which=args.which, overrides=args.overrides)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
