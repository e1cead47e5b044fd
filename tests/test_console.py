"""What a researcher reads: a two-job multirun, piped like a SLURM log. The console shows each job's chosen options
and command-line changes (the whole tree only in config_tree.log, complete, never cut at 80 columns), none of the
libraries' noise, and perf/time_to_first_batch_s is measured per job; `--help` is lmlab's."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import TINY, read_metrics, run_cli

NOISE = ["💡 Tip", "litlogger", "litmodels", "Total FLOPs", "Loading weights", "anonymous", "it/s]",
         "The `srun` command is available",  # Lightning's hint wherever SLURM is installed (CI)
         "LeafSpec", "was called before the ``update`` method"]  # torch/Lightning pytree notice; an unused metric


def test_multirun_console_tree_noise_and_time_to_first_batch_per_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli("train.py", "-m", *TINY, "seed=1,2", f"hydra.sweep.dir={sweep}", f"paths.log_dir={tmp_path}",
                     timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "metrics.json").is_file())
    assert [p.name for p in jobs] == ["seed=1", "seed=2"]

    # The console: the groups' options and what the command line changed; the whole tree only in the file.
    assert "config: task=classification  dataset=bbc_news  model=tiny_bert  optimizer=adamw" in output
    assert "changed: dataset.max_length=32  dataset.batch_size=16" in output
    assert "reload_dataloaders_every_n_epochs" not in output
    for noise in NOISE:
        assert noise not in output, noise
    for job in jobs:
        tree = (job / "config_tree.log").read_text()
        name_or_path = json.loads((job / "resolved_config.json").read_text())["config"]["model.name_or_path"]
        assert f"name_or_path: {name_or_path}\n" in tree  # the whole path: piped output is not cut at 80 columns
        assert "reload_dataloaders_every_n_epochs: 0" in tree
        log_text = (job / "train.log").read_text()
        assert "\x1b[" not in log_text and "\x1b[" not in tree  # no ANSI colour codes in files

    # Per job: the second job's time counts from its own start, not from the process start (it would add up).
    first, second = (read_metrics(job)["perf/time_to_first_batch_s"] for job in jobs)
    assert 0 < second < first
    assert len(re.findall(r"first training batch [\d.]+ s after the job started", output)) == 2


def test_help_is_lmlabs(tmp_path: Path) -> None:
    result = run_cli("train.py", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for text in ["python train.py -m key=a,b seed=1,2,3", "lmlab-report", "debug=fdr", "model: bert, distilbert",
                 "trainer: cpu, ddp", "logs/train/runs/<date>_<time>/", "no `+` is needed"]:
        assert text in result.stdout, text
    assert "powered by Hydra" not in result.stdout
    result = run_cli("eval.py", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "python eval.py ckpt_path=<run dir>" in result.stdout  # the same text
