"""What the libraries print that a researcher does not need, silenced on purpose (each line says what and why).

`quiet_libraries()` runs once per training/eval process, after Hydra has set up logging and before the Trainer is
built. Warnings and errors are never silenced; only tips, progress bars of weight loading/saving and lines that
carry no information for an lmlab run.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("lmlab")

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


class _DropTips(logging.Filter):
    """Lightning's advertising for its cloud products ("💡 Tip: ... litlogger / litmodels")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).lstrip().startswith("💡 Tip")


class _PlainText(logging.Formatter):
    """A log file's formatter without ANSI colour codes (libraries colour some of their messages)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return _ANSI.sub("", self.inner.format(record))


class CurrentStdout(logging.StreamHandler):
    """The console log handler (conf/hydra/default.yaml): writes to whatever `sys.stdout` is when a record is
    emitted. While Lightning's rich progress bar is live, rich swaps `sys.stdout` for a proxy that prints above
    the bar; Hydra's own handler keeps the stream it was given (`ext://sys.stdout`, the terminal) and writes
    under the bar, so rich draws the bar again below the line and the last epoch's bar stays on screen twice."""

    def __init__(self, stream: TextIO | None = None) -> None:  # Hydra's config passes `stream`; not kept
        super().__init__()

    @property  # type: ignore[override]  # StreamHandler's is a plain attribute
    def stream(self) -> TextIO:
        return sys.stdout

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # StreamHandler.__init__ and setStream assign it; the current sys.stdout always wins


def plain_log_files() -> None:
    """Strip ANSI codes from what Hydra's file handlers (`<run dir>/<job>.log`) write."""
    for logger in [
        logging.getLogger(),
        *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]:
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler) and not isinstance(handler.formatter, _PlainText):
                handler.setFormatter(_PlainText(handler.formatter or logging.Formatter()))


def quiet_gguf_reader() -> None:
    """Silence transformers' GGUF reader bar ("Converting and de-quantizing GGUF tensors...", one per GGUF model
    load). The reader calls `tqdm.auto.tqdm` itself, so `transformers.utils.logging.disable_progress_bar()` does
    not reach it, and transformers offers no other switch. The reader's module is imported (~0.4 s) only here,
    when a GGUF model is about to load, so other runs do not pay for it."""
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf_reader

    if not isinstance(gguf_reader.tqdm, functools.partial):
        gguf_reader.tqdm = functools.partial(gguf_reader.tqdm, disable=True)


def quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # download bars (read at huggingface_hub import)
    for name in (
        "pytorch_lightning.utilities.rank_zero",
        "lightning_fabric.utilities.rank_zero",
        "lightning.pytorch.utilities.rank_zero",
    ):
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in target.filters):
            target.addFilter(_DropTips())
    # Lightning's SLURMEnvironment hint, printed twice per run wherever `srun` is on PATH: lmlab's SLURM launcher
    # starts jobs under srun itself, and a run started by hand on a login node is meant to run there.
    warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used")
    # Lightning 2.x's pytree helper still uses torch's deprecated LeafSpec check: a library-to-library notice
    # nothing in lmlab or the user's config can act on, printed once per run.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    import transformers

    # "Loading weights: 100%|####|" per model load and the bars of save_pretrained: one line of noise each.
    transformers.utils.logging.disable_progress_bar()
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    plain_log_files()


_JOB_STARTS: list[float] = []  # wall-clock start of each job this process ran (a multirun runs several)


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc; None elsewhere): time to first batch includes imports."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def mark_job_start() -> None:
    """Called as each job starts (`lmlab.launch.job.run_task`)."""
    _JOB_STARTS.append(time.time())


def job_age_s() -> float | None:
    """Seconds since this job started: from the process start for its first job (imports included, what a single
    run pays), from the job's own start for the later jobs of a multirun (which would otherwise add up)."""
    if len(_JOB_STARTS) > 1:
        return time.time() - _JOB_STARTS[-1]
    return process_age_s()


# Shown first, in this order; the rest follow as composed.
_ORDER = ("task", "dataset", "model", "optimizer", "scheduler", "trainer", "callbacks", "logger", "paths")


def config_tree(cfg: DictConfig) -> str:
    """The whole composed config (resolved) as a tree, one branch per group, never cut at a terminal width."""
    import rich.console
    import rich.text
    import rich.tree

    tree = rich.tree.Tree("CONFIG")
    keys = [k for k in _ORDER if k in cfg] + [k for k in cfg if k not in _ORDER]
    for key in keys:
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(str(key)).add(rich.text.Text(text.rstrip("\n")))
    # A wide, colourless console: a piped run (a log file, SLURM) would otherwise wrap or cut at 80 columns.
    console = rich.console.Console(width=100_000, no_color=True, color_system=None, record=True, file=io.StringIO())
    console.print(tree)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


def config_summary(cfg: DictConfig) -> list[str]:
    """What the console shows of the config: each group's chosen option and what the command line changed."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    hydra = HydraConfig.get()
    choices = {k: v for k, v in hydra.runtime.choices.items() if not k.startswith("hydra/") and v is not None}
    order = [k for k in _ORDER if k in choices] + sorted(k for k in choices if k not in _ORDER)
    lines = ["config: " + "  ".join(f"{k}={choices[k]}" for k in order)]
    changed = [o for o in hydra.overrides.task if o.split("=", 1)[0].lstrip("+~") not in choices]
    if changed:
        lines.append("changed: " + "  ".join(changed))
    return lines


def print_config(cfg: DictConfig, save_to: Path | None = None) -> None:
    """Log the chosen options and the command-line changes; save the complete tree to `save_to`."""
    lines = config_summary(cfg)
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        save_to.write_text(config_tree(cfg))
        lines.append(f"full config: {save_to}")
    for line in lines:
        log.info("%s", line)


@contextlib.contextmanager
def phase(what: str, logger: logging.Logger | None = None) -> Iterator[None]:
    """Say what a phase that can take long is doing (loading a 135M-parameter model takes 1-2 min on a CPU), and
    how long it took: a line before and one after, so a silent minute is never a hung process."""
    logger = logger or log
    logger.info("%s ...", what)
    start = time.perf_counter()
    yield
    logger.info("%s: done in %.1f s", what, time.perf_counter() - start)
