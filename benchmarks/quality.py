"""Time a full training run and check its test macro-F1 (the README's "Quality and time" table).

    python benchmarks/quality.py                                  # the default run: F1 >= 0.93 within 10 min
    python benchmarks/quality.py --min-f1 0.97 --max-minutes 60 experiment=bbc_minilm
Exit status 1 when a target is missed, so it can gate a release.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-f1", type=float, default=0.93)
    parser.add_argument("--max-minutes", type=float, default=10.0)
    parser.add_argument("--log-dir", default=None, help="where the run goes (default: a temporary dir)")
    parser.add_argument("overrides", nargs="*", help="train.py overrides")
    args = parser.parse_args(argv)

    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="lmlab-quality-"))
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), f"paths.log_dir={log_dir}", *args.overrides])
    minutes = (time.perf_counter() - start) / 60
    if result.returncode != 0:
        print(f"training failed (exit {result.returncode})")
        return 1
    metrics_file = max((log_dir / "train" / "runs").glob("*/metrics.json"), key=lambda p: p.stat().st_mtime)
    metrics = json.loads(metrics_file.read_text())
    f1 = metrics["test/f1_macro"]
    ok = f1 >= args.min_f1 and minutes <= args.max_minutes
    print(
        json.dumps(
            {
                "overrides": args.overrides,
                "minutes": round(minutes, 2),
                "test/f1_macro": round(f1, 4),
                "test/acc": round(metrics["test/acc"], 4),
                "best/epoch": metrics["best/epoch"],
                "min_f1": args.min_f1,
                "max_minutes": args.max_minutes,
                "ok": ok,
                "metrics": str(metrics_file),
            }
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
