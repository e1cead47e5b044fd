"""What the libraries print that a researcher does not need, silenced on purpose (each line says what and why).

`quiet_libraries()` runs once per training/eval process, after Hydra has set up logging and before the Trainer is
built. Warnings and errors are never silenced; only tips, progress bars of weight loading/saving and lines that
carry no information for an lmlab run.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from typing import TextIO

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
