"""Console helpers shared by the entry points."""

from __future__ import annotations

import io
import logging
import os
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("lmlab")

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
    """Called as each job starts (`lmlab.train.run_task`)."""
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
