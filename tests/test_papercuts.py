"""Everyday papercuts (issue 24): misspelt groups, file modes, report wording, false warnings, silent phases,
throughput after a resume, and the MLflow logger."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MINILM_DIR, ROOT, TINY, compose_train, run_cli, single_run_dir


# ---- 1. a misspelt config group is refused, before torch is imported
def test_misspelt_group_is_refused_with_the_group_it_meant(tmp_path: Path) -> None:
    from lmlab.config import config_dir
    from lmlab.config.groups import check_top_level_names
    from lmlab.errors import LmlabError

    # --cfg job: on a build without the check this prints the config and exits 0 at once (no training).
    res = run_cli("train.py", "+optimiser=adamw", f"paths.log_dir={tmp_path}", "--cfg", "job", timeout=60)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert "'optimiser' is not a config group" in res.stderr and "Did you mean 'optimizer'" in res.stderr
    for arg in ("optimiser=adamw", "++optimiser.lr=1e-3", "+schedular=cosine"):
        with pytest.raises(LmlabError, match="Did you mean '(optimizer|scheduler)'"):
            check_top_level_names([arg], config_dir())


def test_group_check_runs_before_torch_and_user_namespace_passes(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from lmlab.cli import preparse\n"
        "try:\n"
        "    preparse(['train.py', '+optimiser=adamw'])\n"
        "except SystemExit as e:\n"
        "    print('exit', e.code, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.strip() == "exit 1 False", out.stdout + out.stderr

    from lmlab.config import config_dir, validate
    from lmlab.config.groups import check_top_level_names

    user = ["+user.note=baseline", "+user.ticket=42", "optimizer=sgd", "hydra.run.dir=x", "--cfg", "job", "~tags"]
    check_top_level_names(user, config_dir())  # documented namespace, flags and real names pass
    cfg = compose_train(["+user.note=baseline"], tmp_path / "run")
    validate(cfg)
    assert cfg.user.note == "baseline"


# ---- 2. every file a run writes follows the umask (exports and the tokenization cache included)
def _modes_not_following(root: Path, umask: int) -> list[str]:
    import stat

    bad = []
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode != want:
            bad.append(f"{oct(mode)} {path.relative_to(root)}")
    return bad


def test_run_dir_exports_and_cache_follow_the_umask(
    train_tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    cache = tmp_path / "cache"
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(cache))  # a fresh cache: its files are written by this run
    old = os.umask(0o022)
    try:
        _, full = train_tiny("export_model=true", "callbacks.progress_bar=null")
        _, lora = train_tiny("export_model=true", "peft=lora", "callbacks.progress_bar=null")
    finally:
        os.umask(old)
    assert (full / "model" / "model.safetensors").is_file()
    assert (lora / "model" / "adapter_model.safetensors").is_file()
    assert list(cache.rglob("*.npz"))
    for root in (full, lora, cache):
        assert _modes_not_following(root, 0o022) == [], root


# ---- 4 + 6. no false warnings on a short run or an exact resume; a resumed run keeps its throughput numbers
QUIET = [*TINY, "callbacks.progress_bar=null"]
MONITOR_WARNING = "could not find the monitored key"
LOADER_WARNING = "dataloader is not resumable"


def test_short_run_and_resume_warn_nothing_false_and_keep_throughput(tmp_path: Path) -> None:
    import json

    short = run_cli("train.py", *QUIET, "trainer.max_steps=3", f"paths.log_dir={tmp_path / 'short'}")
    assert short.returncode == 0, short.stderr[-3000:]
    assert MONITOR_WARNING not in short.stdout + short.stderr
    # What happens instead: a validation at the end of the budget (callbacks.eval_schedule), scored as best_val
    short_metrics = json.loads((single_run_dir(tmp_path / "short") / "metrics.json").read_text())
    assert short_metrics["best/step"] == 3 and short_metrics["best/epoch"] == 0, short_metrics
    assert "val/f1_macro" in short_metrics and "test/f1_macro" in short_metrics

    log_dir = tmp_path / "resume"
    args = [*QUIET, "trainer.max_epochs=2", "callbacks.early_stopping=null", f"paths.log_dir={log_dir}"]
    first = run_cli("train.py", *args, env={"LMLAB_FAULT_SIGNAL": "step:9:SIGTERM"})  # epoch 2 of 6-step epochs
    assert first.returncode == 128 + 15, first.stderr[-3000:]
    run_dir = single_run_dir(log_dir)
    second = run_cli("train.py", *args, f"ckpt_path={run_dir}")
    assert second.returncode == 0, second.stderr[-3000:]
    out = second.stdout + second.stderr
    assert LOADER_WARNING not in out and MONITOR_WARNING not in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["perf/train_resumed"] is True and metrics["perf/train_resumed_from_step"] == 9
    for key in ("samples_per_sec", "tokens_per_sec", "step_time_s"):
        assert metrics[f"perf/train_{key}"] > 0, key
    assert "resumed attempt's steps 10-12" in metrics["perf/train_note"]


# ---- 3. the report says what the data support next to "selected"; the hparam plot shows the selection metric
def test_report_says_what_the_data_support_and_plots_the_selection_metric(tmp_path: Path) -> None:
    import json

    import numpy as np

    from lmlab.report import main
    from tests.test_report import GRID, G, make_grid_sweep, write_job

    # Two optimizers within noise of each other: the higher val mean is selected, but nothing is detected.
    sweep = tmp_path / "close"
    noise = {"adamw": [0.80, 0.83, 0.79], "sgd": [0.81, 0.80, 0.82]}
    for i, (opt, seed) in enumerate((o, s) for o in noise for s in range(3)):
        v = noise[opt][seed]
        metrics = {"val/f1_macro": v, "test/f1_macro": v - 0.01, "meta/monitor": "val/f1_macro", "meta/mode": "max"}
        write_job(sweep / str(i), [f"optimizer={opt}", f"seed={seed}"], metrics)
    assert main([str(sweep), "--no-plots", "--baseline", "optimizer=adamw"]) == 0
    md = (sweep / "report.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("- selected:"))
    assert line.startswith("- selected: `optimizer=sgd`")
    assert "no detectable difference from the baseline optimizer=adamw on test/f1_macro at this power" in line
    assert "MDE " in line and "seeds needed" in line
    assert main([str(sweep), "--no-plots"]) == 0  # no baseline: a ranking, nothing tested
    md = (sweep / "report.md").read_text()
    assert "no difference was tested" in next(x for x in md.splitlines() if x.startswith("- selected:"))

    grid = make_grid_sweep(tmp_path / "grid")
    assert main([str(grid), "--baseline", G[("adamw", "1e-4")]]) == 0
    rep = json.loads((grid / "report.json").read_text())
    hp = rep["hparam"]
    assert hp["key"] == "optimizer.lr" and hp["metric"] == "val/f1_macro"
    for p in hp["points"]:
        key = next(k for k, name in G.items() if name == p["group"])
        assert p["mean"] == pytest.approx(np.mean([v for v in GRID[key]["val"] if v is not None]))
    assert "baseline itself was selected" in rep["selection"]["support"]


# ---- 5. long phases say what they are doing (model loading, data preparation, evaluation)
def test_long_phases_log_what_they_do(train_tiny, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from lmlab.eval import evaluate
    from lmlab.models.backbone import load_backbone

    with caplog.at_level(logging.INFO, logger="lmlab"):
        _, run_dir = train_tiny("callbacks.progress_bar=null")
        trained = caplog.text
        caplog.clear()
        evaluate(compose_train([f"ckpt_path={run_dir}", "split=val"], tmp_path / "eval", config_name="eval"))
        evaluated = caplog.text
        caplog.clear()
        load_backbone(str(MINILM_DIR), auto_class="AutoModel")  # from_pretrained, as model=smollm2 is loaded
        loaded = caplog.text
    for text in (trained, evaluated):
        # Before and after: a minute of silence is never a hung process.
        assert "building (random init) model " in text and "(AutoModelForSequenceClassification): done in " in text
        assert "data (tokenizing, or reading the tokenization cache) ..." in text
        assert "data (tokenizing, or reading the tokenization cache): done in" in text
    assert f"loading model {MINILM_DIR} (AutoModel) ..." in loaded and "(AutoModel): done in" in loaded
    assert "evaluating checkpoints/epoch000-step000006" in trained and " on val and test" in trained
    assert "evaluating on val (" in evaluated and "loading checkpoint " in evaluated


# ---- 7. logger=mlflow: offline (local SQLite store), a sweep is one experiment, each job a run
def test_mlflow_logger_offline_sweep_is_one_experiment(tmp_path: Path) -> None:
    import json

    mlflow = pytest.importorskip("mlflow")

    sweep = tmp_path / "sweep"
    res = run_cli(
        "train.py",
        "-m",
        *QUIET,
        "logger=mlflow",
        "seed=1,2",
        f"paths.log_dir={tmp_path}",
        f"hydra.sweep.dir={sweep}",
        env={"MLFLOW_TRACKING_URI": ""},  # never a server from the environment
    )
    assert res.returncode == 0, res.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"lmlab/{sweep.name}")
    assert experiment is not None, [e.name for e in client.search_experiments()]
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["seed=1", "seed=2"]  # named by the overrides that vary, like W&B
    for seed in (1, 2):
        run = runs[f"seed={seed}"]
        metrics = json.loads((sweep / f"seed={seed}" / "metrics.json").read_text())
        assert run.info.status == "FINISHED"
        assert run.data.params["seed"] == str(seed) and run.data.params["model/name_or_path"]
        assert run.data.tags["override.seed"] == str(seed) and run.data.tags["sweep"] == sweep.name
        assert run.data.metrics["test/f1_macro"] == pytest.approx(metrics["test/f1_macro"])
        assert client.get_metric_history(run.info.run_id, "train/loss_epoch")  # logged during the fit too
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"metrics.json", "manifest.json"}
    assert not (ROOT / "mlruns").exists()  # nothing written outside paths.log_dir
