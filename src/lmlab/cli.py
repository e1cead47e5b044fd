"""The command line before Hydra parses it.

- `ckpt_path=<path>`: sweep job dirs are named like `optimizer.lr=3e-5,seed=2`, which Hydra's override grammar
  would read as a sweep or a syntax error. An existing path is quoted for Hydra, so it can be pasted as is.
- Resuming an unfinished single run (`ckpt_path=<its run dir>` with the same settings) continues in that run dir
  (one learning curve, one status), instead of starting a new dir: `hydra.run.dir` is set to it.
- A run into an explicit `hydra.run.dir` that holds another run's results is refused here, before Hydra rewrites
  that dir's `.hydra/` files.
- An override of an unknown top-level name (`+optimiser=adamw`, a misspelt group) is refused with the name it
  probably meant (`lmlab.config.groups`); `+user.<name>=` is the namespace for settings of your own.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from lmlab.config.arglists import quote
from lmlab.errors import LmlabError
from lmlab.launch.ddp import env_rank, rank_overrides
from lmlab.rundir import run_dir_of

_CKPT = re.compile(r"^(\+{0,2}ckpt_path)=(.*)$", re.S)
_RUN_DIR = re.compile(r"^\+{0,2}hydra\.run\.dir=(.*)$", re.S)
_NEEDS_QUOTES = re.compile(r"[=,\s\[\](){}'\"\\:$*?]")


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _compose(args: list[str]) -> Any:
    """The config `python train.py args` would run with (Hydra's compose API; ~1 s, only when resuming)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from lmlab.config import config_dir, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=args, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        return cfg
    finally:
        GlobalHydra.instance().clear()


def preparse(argv: list[str], entry: str = "train") -> list[str]:
    """argv with `ckpt_path=` made Hydra-safe and, for train, the resume/run-dir decisions above."""
    from lmlab import rundir

    args = list(argv[1:])
    from lmlab.config import config_dir
    from lmlab.config.groups import check_top_level_names

    try:  # `+optimiser=adamw` would run with the default optimizer
        check_top_level_names(args, config_dir(), entry)
    except LmlabError as err:
        print(f"[lmlab] error: {err}", file=sys.stderr)
        sys.exit(1)
    if entry == "train":
        from lmlab.config.arglists import check_overrides

        try:
            args = check_overrides(args)
        except LmlabError as err:
            print(f"[lmlab] error: {err}", file=sys.stderr)
            sys.exit(1)
    ckpt: Path | None = None
    for i, arg in enumerate(args):
        match = _CKPT.match(arg)
        if match:
            key, value = match.groups()
            raw = _unquoted(value)
            if Path(raw).expanduser().exists():
                ckpt = Path(raw).expanduser()
                if _NEEDS_QUOTES.search(raw) and raw == value:
                    args[i] = f"{key}={quote(raw)}"
    flags = [a for a in args if a.startswith("-")]
    info_only = (
        "-m",
        "--multirun",
        "--cfg",
        "-c",
        "--help",
        "-h",
        "--hydra-help",
        "--info",
        "-i",
        "--shell-completion",
        "-sc",
    )
    rank = env_rank()  # a DDP rank > 0 (Lightning's child, torchrun, srun): rank 0 checked and locked the dir
    if rank > 0 and entry == "train" and not any(a.lstrip("+").startswith("hydra.job.name=") for a in args):
        args.extend(rank_overrides(rank))  # torchrun / srun: its own log file, rank 0's .hydra/ left alone
    if entry != "train" or rank > 0 or any(f in info_only or f.startswith("--cfg") for f in flags):
        return [argv[0], *args]
    overrides = [a for a in args if not a.startswith("-")]
    explicit = next((Path(_unquoted(m.group(1))) for a in overrides if (m := _RUN_DIR.match(a))), None)
    target = explicit
    if target is None and ckpt is not None:
        run_dir = run_dir_of(ckpt)
        status = rundir.read_status(run_dir)
        if status and rundir.effective_status(status) not in rundir.FINISHED and rundir.read_resolved(run_dir):
            target = run_dir
    if target is None or not rundir.holds_results(target):
        return [argv[0], *args]
    from lmlab.rundir import check_run_dir

    try:
        rundir.lock_run_dir(target).close()  # a live run holds it: refuse before Hydra touches the dir
        config = rundir.result_config(_compose(overrides))
        check_run_dir(target, config)
    except LmlabError as err:
        if explicit is not None:
            print(f"[lmlab] error: {err}", file=sys.stderr)
            sys.exit(1)
        print(f"[lmlab] resuming into a new run dir: {err}", file=sys.stderr)
        return [argv[0], *args]
    if explicit is None:
        print(f"[lmlab] continuing the unfinished run in {target}", file=sys.stderr)
        args.append(f"hydra.run.dir={quote(str(target.resolve()))}")
    return [argv[0], *args]
