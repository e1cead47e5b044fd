"""What a researcher reads: a two-job multirun, piped like a SLURM log. The console shows each job's chosen options
and command-line changes (the whole tree only in config_tree.log, complete, never cut at 80 columns), none of the
libraries' noise, and perf/time_to_first_batch_s is measured per job; `--help` is lmlab's."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import ROOT, TINY, read_metrics, run_cli

NOISE = [
    "💡 Tip",
    "litlogger",
    "litmodels",
    "Total FLOPs",
    "Loading weights",
    "anonymous",
    "it/s]",
    "The `srun` command is available",  # Lightning's hint wherever SLURM is installed (CI)
    "LeafSpec",
    "was called before the ``update`` method",
]  # torch/Lightning pytree notice; an unused metric


def test_multirun_console_tree_noise_and_time_to_first_batch_per_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(
        "train.py", "-m", *TINY, "seed=1,2", f"hydra.sweep.dir={sweep}", f"paths.log_dir={tmp_path}", timeout=600
    )
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
    for text in [
        "python train.py -m key=a,b seed=1,2,3",
        "lmlab-report",
        "debug=fdr",
        "model: bert, distilbert",
        "trainer: cpu, ddp",
        "logs/train/runs/<date>_<time>/",
        "no `+` is needed",
    ]:
        assert text in result.stdout, text
    assert "powered by Hydra" not in result.stdout
    result = run_cli("eval.py", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "python eval.py ckpt_path=<run dir>" in result.stdout  # the same text


def _in_a_terminal(args: list[str], columns: int = 120, timeout: float = 300) -> tuple[int, list[str]]:
    """Run `python <args>` on a pseudo-terminal (so rich draws its live progress bar) and return the exit code and
    the lines a terminal of `columns` columns shows at the end, scrollback included (pyte emulates it)."""
    import fcntl
    import os
    import pty
    import select
    import signal
    import struct
    import sys
    import termios
    import time

    import pyte

    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal-sized session running the command; never returns into pytest
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))  # fd 0: the terminal
            os.execve(sys.executable, [sys.executable, *args], {**os.environ, "COLUMNS": str(columns), "TERM": "xterm"})
        finally:
            os._exit(127)
    chunks, deadline = [], time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)  # waitpid below then returns, and the exit code says it was killed
            break
        if select.select([fd], [], [], 1.0)[0]:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    screen = pyte.HistoryScreen(columns, 50, history=5000)
    pyte.ByteStream(screen).feed(b"".join(chunks))
    rows = ["".join(char.data for char in row.values()) for row in screen.history.top]
    return os.waitstatus_to_exitcode(status), [r.rstrip() for r in [*rows, *screen.display] if r.strip()]


def test_progress_bar_is_drawn_once_with_log_lines_above_it_in_a_terminal(tmp_path: Path) -> None:
    # Lines logged while the bar is live (the fit loop's "stopped" line, the first-batch time) used to be written
    # under the bar by Hydra's handler, and rich drew the last epoch's bar a second time below them.
    code, lines = _in_a_terminal([str(ROOT / "train.py"), *TINY, "trainer.max_epochs=2", f"paths.log_dir={tmp_path}"])
    assert code == 0, "\n".join(lines[-30:])
    bars = [i for i, line in enumerate(lines) if line.startswith("Epoch 1/1")]
    assert len(bars) == 1, "\n".join(lines[-30:])
    stopped = next(i for i, line in enumerate(lines) if "`Trainer.fit` stopped" in line)
    first_batch = next(i for i, line in enumerate(lines) if "first training batch" in line)
    assert stopped < first_batch < bars[0]  # logged above the live bar, each on its own line
    assert not any(line.startswith("Epoch 0/1") for line in lines[bars[0] :])
