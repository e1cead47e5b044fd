"""`hydra/sweeper=wsd_branches` (experiment=wsd_branches): the final loss at several token budgets from one run plus
short decays (Hägele et al. 2024), in one `python train.py -m` (docs/experiments.md, "Decay branches (WSD)").

- `stable/`: one `scheduler=wsd` run of `task.max_tokens` with no decay (`scheduler.decay_steps=0`: warmup, then
  the stable lr to its end), keeping a complete checkpoint when its training tokens first reach each of
  `wsd_branches.at_tokens` (`callbacks.branch_checkpoints`, `checkpoints/branch-tokens<N>.ckpt`).
- `branch-<N>/`, launched when the stable run has finished: each resumes its checkpoint (weights, optimizer and
  scheduler state, data position, RNG) into its own run dir, and decays the lr over `ceil(wsd_branches.decay x n)`
  more optimizer steps (n: the step of the checkpoint; the expression `scheduler.decay` uses for a run of n steps)
  from the stable lr to `scheduler.min_lr_ratio` with `scheduler.decay_shape`: a `scheduler=wsd` run of n + d steps
  whose decay starts at step n (`scheduler.decay_steps=d`), so its first step's lr is the stable lr. Its manifest
  records the stable run, the checkpoint, its step and token count as `lineage` (as `model.init_from` does).
- `branches.json`: the plan (each branch's point, step, decay steps, budget in tokens) before the branches start;
  then each branch's status and final val/test metrics, and `budgets`: budget in tokens -> those metrics.
- Resumable as the grid sweeper (this is one): a re-issued command skips completed jobs, so a kill between or
  during the stages loses only what was running. Any launcher runs each stage; the branches wait for the stable run.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from lmlab import rundir
from lmlab.config import token_counts
from lmlab.config.arglists import quote
from lmlab.errors import LmlabError
from lmlab.launch import sweep
from lmlab.launch.grid_sweeper import ResumableSweeper

log = logging.getLogger("lmlab.wsd_branches")

BRANCHES = "branches.json"
STABLE = "stable"


def check_spec(cfg: Any) -> dict[str, Any]:
    """wsd_branches.*, the schedule and the budget, checked before anything runs."""
    spec = OmegaConf.to_container(cfg.get("wsd_branches") or {}, resolve=True)
    if not isinstance(spec, dict):
        raise LmlabError(f"wsd_branches={spec!r} must be a mapping: {{at_tokens: [...], decay: 0.25}}.")
    unknown = set(spec) - {"at_tokens", "decay"}
    if unknown:
        raise LmlabError(f"wsd_branches has unknown key(s) {sorted(unknown)}: it has at_tokens and decay.")
    at_tokens = token_counts(spec.get("at_tokens"), "wsd_branches.at_tokens")
    if not at_tokens:
        raise LmlabError("wsd_branches.at_tokens is empty: give the branch points, e.g. [100000,200000,400000].")
    decay = spec.get("decay")
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
        raise LmlabError(
            f"wsd_branches.decay={decay!r} must be in (0, 1]: a branch at N tokens decays over decay x N more "
            f"tokens (0.25 = 20% of the branch's whole run, Hägele et al.'s cooldown). A decay longer than the "
            f"stable training before it (> 1) is not a cooldown of that run; train it as its own scheduler=wsd run."
        )
    name = OmegaConf.select(cfg, "scheduler.name")
    if name != "wsd":
        raise LmlabError(
            f"experiment=wsd_branches needs scheduler=wsd (the branches decay with its shape and min_lr_ratio), "
            f"not scheduler={name}."
        )
    budget = OmegaConf.select(cfg, "task.max_tokens")
    if budget is None or OmegaConf.select(cfg, "task.max_flops") is not None:
        raise LmlabError(
            "experiment=wsd_branches budgets the stable run in tokens: set task.max_tokens (and task.max_flops=null)."
        )
    beyond = [n for n in at_tokens if n > int(budget)]
    if beyond:
        raise LmlabError(
            f"wsd_branches.at_tokens={at_tokens}: {beyond} beyond the stable run's budget task.max_tokens={budget}: "
            f"the stable run never reaches them. Raise task.max_tokens to at least {max(beyond)}, or branch earlier."
        )
    return {"at_tokens": at_tokens, "decay": float(decay), "max_tokens": int(budget)}


def decay_steps(decay: float, step: int) -> int:
    """Optimizer steps a branch from `step` decays: ceil(decay x step), as scheduler.decay counts a run's."""
    return max(1, math.ceil(decay * step))


def whole(value: float) -> float | int:
    """An integral float as an int (a budget of 4096.0 tokens is the key "4096" in branches.json)."""
    return int(value) if float(value).is_integer() else value


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """A run's final val/* and test/* numbers (what each budget reports)."""
    return {k: v for k, v in metrics.items() if k.startswith(("val/", "test/")) and isinstance(v, (int, float))}


class WsdBranchesSweeper(ResumableSweeper):
    def sweep(self, arguments: list[str]) -> Any:
        try:
            return self._branches(arguments)
        except LmlabError as err:
            log.error("%s", err)
            sys.exit(1)

    def _branches(self, arguments: list[str]) -> list[Any]:
        assert self.config is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        swept = [o.input_line for o in parser.parse_overrides(arguments) if o.is_sweep_override()]
        if swept or self._parse_config():
            raise LmlabError(
                f"experiment=wsd_branches runs one stable run and its branches; a sweep on the command line or in "
                f"hydra.sweeper.params ({swept or self._parse_config()}) would be applied to each. Sweep over "
                f"separate sweep dirs (one per setting) instead."
            )
        spec = check_spec(self.config)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        base = list(arguments)
        at = ",".join(map(str, spec["at_tokens"]))
        stable = [
            *base,
            "scheduler.decay_steps=0",
            f"callbacks.branch_checkpoints.at_tokens=[{at}]",
            f"hydra.sweep.subdir={STABLE}",
        ]
        self.prepare([stable])
        (stable_return,) = self.launcher.launch([stable], initial_job_idx=0)
        stable_dir = sweep_dir / STABLE
        if stable_return.status != JobStatus.COMPLETED or not (stable_dir / rundir.METRICS).is_file():
            raise LmlabError(
                f"the stable run failed ({rundir.read_status(stable_dir).get('error') or 'see its log'}); no branch "
                f"was started. See status.json / traceback.txt in {stable_dir}, fix it and re-issue the command."
            )
        record = self._plan(spec, stable_dir, base)
        jobs = [entry.pop("overrides") for entry in record["branches"]]
        self.prepare(jobs)
        record["stage"] = "branches"
        rundir.write_json(sweep_dir / BRANCHES, record)  # the plan, before any branch starts
        log.info(
            "wsd_branches: stable run done; %d branches: %s",
            len(jobs),
            ", ".join(f"{b['tokens']} tokens + {b['decay_steps']} decay steps" for b in record["branches"]),
        )
        returns = list(self.launcher.launch(jobs, initial_job_idx=1))
        record["stage"] = "done"
        for entry, ret in zip(record["branches"], returns):
            self._result(sweep_dir, entry, ret)
        record["budgets"] = {
            str(b["budget_tokens"]): scalars(b) for b in record["branches"] if b["status"] == "completed"
        }
        rundir.write_json(sweep_dir / BRANCHES, record)
        for budget, values in record["budgets"].items():
            log.info("wsd_branches: %s tokens: val/loss=%s test/loss=%s", budget, values.get("val/loss"),
                     values.get("test/loss"))  # fmt: skip
        failed = [b["dir"] for b in record["branches"] if b["status"] != "completed"]
        if failed:
            raise LmlabError(
                f"branch(es) {', '.join(failed)} failed (see status.json / traceback.txt in {sweep_dir}/{failed[0]}); "
                f"{BRANCHES} lists the others. Fix and re-issue the command: completed jobs are kept."
            )
        return [[stable_return], returns]

    def _plan(self, spec: Mapping[str, Any], stable_dir: Path, base: Sequence[str]) -> dict[str, Any]:
        """branches.json before the branches: the stable run and, per branch point, its checkpoint, step, decay and
        budget; each entry's `overrides` is its job (taken out before writing)."""
        assert self.config is not None
        manifest = rundir.read_json(stable_dir / rundir.MANIFEST)
        stable_metrics = rundir.read_json(stable_dir / rundir.METRICS)
        per_step = stable_metrics.get("budget/tokens_per_step")
        saved = {e["tokens"]: e for e in manifest.get("branch_checkpoints") or []}
        scheduler = OmegaConf.to_container(self.config.scheduler, resolve=True)
        assert isinstance(scheduler, dict)
        record: dict[str, Any] = {
            "method": "one stable run, then a short decay from its checkpoint at each branch point "
            "(Hägele et al. 2024; lmlab docs/experiments.md)",
            "decay": spec["decay"],
            "decay_shape": scheduler.get("decay_shape"),
            "min_lr_ratio": scheduler.get("min_lr_ratio"),
            "base_overrides": list(base),
            "stable": {
                "dir": STABLE,
                "max_tokens": spec["max_tokens"],
                "tokens_per_step": per_step,
                "steps": stable_metrics.get("budget/steps_trained"),
                **scalars(stable_metrics),
            },
            "branches": [],
        }
        for tokens in spec["at_tokens"]:
            entry = saved.get(tokens)
            name = rundir.BRANCH_CKPT.format(tokens=tokens)
            path = stable_dir / entry["path"] if entry else stable_dir / rundir.CHECKPOINTS / name
            problem = None if entry else "the stable run recorded no such checkpoint (manifest.json branch_checkpoints)"
            if not problem and not sweep.is_completed(stable_dir.parent / f"branch-{tokens}"):
                problem = rundir.readable(path)  # a completed branch no longer needs its checkpoint
            if problem:
                raise LmlabError(
                    f"the branch checkpoint for {tokens} tokens is missing or unusable ({path}: {problem}). Train the "
                    f"stable run again: delete {stable_dir} (or re-issue with hydra.sweeper.resume=false)."
                )
            step = int(entry["step"])
            decay = decay_steps(spec["decay"], step)
            overrides = [
                *base,
                f"ckpt_path={quote(str(path.absolute()))}",
                "task.max_tokens=null",  # the branch's budget in steps: its schedule is counted in steps
                f"trainer.max_steps={step + decay}",
                "trainer.max_epochs=-1",
                "scheduler.warmup=0",  # every step of a branch lies in its decay: the warmup was the stable run's
                f"scheduler.decay_steps={decay}",
                f"hydra.sweep.subdir=branch-{tokens}",
            ]
            record["branches"].append(
                {
                    "tokens": tokens,
                    "step": step,
                    "decay_steps": decay,
                    "max_steps": step + decay,
                    "budget_tokens": whole((step + decay) * per_step) if per_step else None,
                    "checkpoint": str(path.relative_to(stable_dir.parent)),
                    "dir": f"branch-{tokens}",
                    "overrides": overrides,
                }
            )
        return record

    @staticmethod
    def _result(sweep_dir: Path, entry: dict[str, Any], ret: JobReturn) -> None:
        metrics_file = sweep_dir / entry["dir"] / rundir.METRICS
        completed = ret.status == JobStatus.COMPLETED and metrics_file.is_file()
        entry["status"] = "completed" if completed else "failed"
        if completed:
            metrics = rundir.read_json(metrics_file)
            entry["tokens_trained"] = metrics.get("budget/tokens_trained")
            entry.update(scalars(metrics))
