"""benchmarks/lm_quality.py recipe (make bench-lm-quality, the issue-25 speedrun target) in a tiny mode: real
train.py runs on two seeds, the n-grams fitted on the split rebuilt from the runs' resolved dataset config (checked
by data fingerprint), the seeds' mean and t interval, the exit status, and the refusal of a run whose config no longer
rebuilds its data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from tests.conftest import ROOT, TINY_LM

TINY_RECIPE = [*TINY_LM, "trainer.max_steps=2"]
NGRAM = ["--max-order", "3", "--word-orders", "1,2"]


def quality(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "lm_quality.py"), "recipe", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict, Path]:
    out = tmp_path_factory.mktemp("lmq")
    res = quality(
        "--seeds", "1,2", "--min-seeds", "2", *NGRAM, "--log-dir", str(out / "logs"), "--json", str(out / "q.json"),
        *TINY_RECIPE,
    )  # fmt: skip
    return res, json.loads((out / "q.json").read_text()), out


def test_recipe_two_seeds_against_ngrams_on_the_runs_split(tiny: tuple) -> None:
    res, q, _ = tiny
    # Two optimizer steps of a random-init model are far above any n-gram: the target is missed, exit status 1.
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    assert q["ok"] is False
    runs = [Path(r["run_dir"]) for r in q["runs"]]
    manifests = [json.loads((d / "manifest.json").read_text()) for d in runs]
    assert [m["seed"] for m in manifests] == [1, 2]
    # The n-grams saw the split the runs trained on: same fingerprint, same document counts as the manifests.
    assert {m["data"]["fingerprint"] for m in manifests} == {q["data_fingerprint"]}
    sizes = manifests[0]["data"]["sizes"]
    assert sizes == {"train": 32, "val": 8, "test": 8}
    assert f"{sizes['train']} train, {sizes['val']} val, {sizes['test']} test documents" in res.stdout
    # Mean and 95 % t interval of the seeds' test bpb, as scipy computes them.
    bpb = np.array([json.loads((d / "metrics.json").read_text())["test/bpb"] for d in runs])
    assert q["test_bpb"]["mean"] == pytest.approx(bpb.mean())
    low, high = stats.t.interval(0.95, 1, loc=bpb.mean(), scale=stats.sem(bpb))
    assert q["test_bpb"]["ci95"] == pytest.approx([low, high])
    # The best n-gram is the lower of the two families' val-chosen orders, scored on test.
    fams = q["ngrams"]
    assert set(fams["byte_kn"]["by_order"]) == {"1", "2", "3"} and set(fams["word_kn"]["by_order"]) == {"1", "2"}
    best = min(fams["byte_kn"]["best"]["test_bpb"], fams["word_kn"]["best"]["test_bpb"])
    assert q["best_ngram"]["test_bpb"] == best
    assert q["best_ngram"]["test_bpb"] < q["test_bpb"]["mean"]
    assert f"best n-gram (chosen on val): {q['best_ngram']['name']} {best:.4f}" in res.stdout
    assert "target met: False" in res.stdout
    assert len(q["minutes"]) == 2 and all(0 < m < 10 for m in q["minutes"])


def test_from_run_refuses_a_run_whose_config_rebuilds_other_data(tiny: tuple, tmp_path: Path) -> None:
    _, q, _ = tiny
    run = tmp_path / "run"
    shutil.copytree(q["runs"][0]["run_dir"], run)
    again = quality("--from-run", str(run), "--min-seeds", "1", *NGRAM)
    assert again.returncode == 1 and "target met: False" in again.stdout  # scored from the files, not retrained
    assert again.stdout.count(", seed 1") == 1
    config = json.loads((run / "resolved_config.json").read_text())
    config["config"]["dataset.split_seed"] = 7  # another split than the one the run trained on
    (run / "resolved_config.json").write_text(json.dumps(config))
    res = quality("--from-run", str(run), *NGRAM)
    assert res.returncode == 1
    assert f"but the run trained on {q['data_fingerprint']} (manifest.json)" in res.stderr
    assert "best n-gram" not in res.stdout


def test_ablate_prints_each_variant_against_the_first(tmp_path: Path) -> None:
    res = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "lm_quality.py"), "ablate", "--seeds", "3",
            "--variant", "today=", "--variant", "lr=optimizer.lr=1e-2 optimizer.weight_decay=0.0",
            "--log-dir", str(tmp_path / "logs"), "--json", str(tmp_path / "a.json"), *TINY_RECIPE,
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = json.loads((tmp_path / "a.json").read_text())["variants"]
    assert [r["name"] for r in rows] == ["today", "lr"]
    assert rows[1]["overrides"] == ["optimizer.lr=1e-2", "optimizer.weight_decay=0.0"]
    for r in rows:  # each variant ran as named: seed 3, its own overrides, in its own log dir
        run = Path(r["run_dir"])
        assert run.parent.parent.parent == tmp_path / "logs" / r["name"]
        assert json.loads((run / "manifest.json").read_text())["seed"] == 3
    config = json.loads((Path(rows[1]["run_dir"]) / "resolved_config.json").read_text())["config"]
    assert config["optimizer.lr"] == 1e-2 and config["optimizer.weight_decay"] == 0.0
    a, b = (r["metrics"]["test/bpb"] for r in rows)
    assert a != b
    line = next(x for x in res.stdout.splitlines() if x.startswith("lr "))
    assert f"{b:.4f}" in line and f"{b - a:+.4f}" in line and "optimizer.lr=1e-2 optimizer.weight_decay=0.0" in line
