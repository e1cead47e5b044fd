"""The language-model targets: the default LM recipe against classical n-gram LMs, and a SmolLM2 fine-tune against
its own zero-shot evaluation (README, "Language models: measured").

    python benchmarks/lm_quality.py recipe            # python train.py task=causal_lm, timed, vs n-gram bpb
    python benchmarks/lm_quality.py smollm2 --steps 40 --max-length 128 --batch-size 4 \
        dataset.max_samples.val=20 dataset.max_samples.test=60   # zero-shot test ppl, a short fine-tune, again
Exit status 1 when a target is missed (recipe: test bpb below byte KN order 5 and ≤ --max-minutes).
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


def ngram_baselines(max_order: int) -> dict[str, Any]:
    """Byte- and word-level Kneser-Ney on the same BBC split (benchmarks/ngram.py)."""
    from benchmarks.ngram import bbc_texts, best_baselines

    return best_baselines(bbc_texts(), max_order=max_order)


def finished_run(run_dir: Path) -> dict[str, Any]:
    """An earlier run's metrics and its start-to-end minutes (status.json), instead of training again."""
    from datetime import datetime

    status = json.loads((run_dir / "status.json").read_text())
    if status.get("status") != "completed":
        raise SystemExit(f"{run_dir} did not complete: {status}")
    span = datetime.fromisoformat(status["ended"]) - datetime.fromisoformat(status["started"])
    return {
        "metrics": json.loads((run_dir / "metrics.json").read_text()),
        "minutes": round(span.seconds / 60, 2),
        "cpu_minutes": None,
        "run_dir": str(run_dir),
    }


def recipe(args: argparse.Namespace, log_dir: Path) -> tuple[dict[str, Any], bool]:
    lm = (
        finished_run(Path(args.from_run))
        if args.from_run
        else run("train.py", log_dir, ["task=causal_lm", *args.overrides])
    )
    m = lm["metrics"]
    ngrams = ngram_baselines(args.max_order)
    kn5 = ngrams["byte_kn"]["by_order"]["5"]["test_bpb"]
    best = min(v["test_bpb"] for v in (ngrams["byte_kn"]["best"], ngrams["word_kn"]["best"]))
    rows = [("lmlab task=causal_lm (" + " ".join(args.overrides or ["default"]) + ")", m["test/bpb"], m["val/bpb"])]
    rows += [(f"byte KN order {o}", v["test_bpb"], v["val_bpb"]) for o, v in ngrams["byte_kn"]["by_order"].items()]
    rows += [
        (f"word KN order {o} (+ byte spelling)", v["test_bpb"], v["val_bpb"])
        for o, v in ngrams["word_kn"]["by_order"].items()
    ]
    print(f"\n{'model':<55} {'test bpb':>9} {'val bpb':>9}")
    for name, test, val in rows:
        print(f"{name:<55} {test:>9.4f} {val:>9.4f}")
    ok = m["test/bpb"] < kn5 and lm["minutes"] <= args.max_minutes
    print(
        f"\nlmlab: {lm['minutes']} min wall ({lm['cpu_minutes']} CPU min), test ppl {m['test/ppl']:.2f}; "
        f"below byte KN-5 ({kn5:.4f}): {m['test/bpb'] < kn5}; below the best n-gram ({best:.4f}): "
        f"{m['test/bpb'] < best}; within {args.max_minutes} min: {lm['minutes'] <= args.max_minutes}"
    )
    return {"lmlab": lm, "ngrams": ngrams, "byte_kn5_test_bpb": kn5, "best_ngram_test_bpb": best, "ok": ok}, ok


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
    parser.add_argument("which", choices=["recipe", "smollm2"])
    parser.add_argument("--max-minutes", type=float, default=10.0)
    parser.add_argument("--max-order", type=int, default=8, help="n-gram orders 1..N (chosen on val)")
    parser.add_argument("--steps", type=int, default=60, help="smollm2: fine-tuning steps")
    parser.add_argument("--lr", type=float, default=1e-4, help="smollm2: fine-tuning lr")
    parser.add_argument("--max-length", type=int, default=256, help="smollm2: block length")
    parser.add_argument("--batch-size", type=int, default=8, help="smollm2: blocks per step")
    parser.add_argument("--from-run", default=None, help="recipe: score this finished run dir instead of training")
    parser.add_argument("--zero-shot-run", default=None, help="smollm2: reuse this finished eval run dir")
    parser.add_argument("--log-dir", default=None, help="where the runs go (default: a temporary dir)")
    parser.add_argument("--json", default=None, help="write the numbers here")
    parser.add_argument("overrides", nargs="*", help="extra train.py/eval.py overrides")
    args = parser.parse_intermixed_args(argv)  # overrides may follow the options
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="lmlab-lm-quality-"))
    result, ok = (recipe if args.which == "recipe" else smollm2)(args, log_dir)
    result.update(date=time.strftime("%Y-%m-%d"), which=args.which, overrides=args.overrides)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
