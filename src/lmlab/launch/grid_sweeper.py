"""`hydra/sweeper=lmlab`: Hydra's basic grid sweeper, resumable.

- Job dirs are named from the overrides that vary across the sweep (`hydra.job.override_dirname` with the
  sweep-constant keys excluded), so a re-issued command finds each job's dir by its config.
- Jobs whose dir already holds a completed run are not launched at all: Hydra rewrites a job's `.hydra/`
  files when it starts the job, so skipping has to happen before the launcher sees it.
- A job is the same job only when its whole result-relevant config matches (`rundir.result_config`): a
  re-issue whose config differs from what a job dir holds (a changed constant such as trainer.max_epochs) is
  refused, naming the differing keys, before anything is launched or rewritten. With
  `hydra.sweeper.resume=false` every job runs again; dirs that hold an earlier run are first moved aside to
  `<dir>.replaced-<time>`, so results of two configs never mix.
- `<sweep dir>/sweep.json` lists every job of the invocation, with its real overrides, before any starts.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from lmlab import rundir
from lmlab.launch import sweep

log = logging.getLogger("lmlab.sweep")


class _SkipCompleted:
    """Stands in for the configured launcher (basic, submitit, ...): launches only unfinished jobs and
    answers for the completed ones with their recorded result."""

    def __init__(self, sweeper: ResumableSweeper, launcher: Any) -> None:
        self.sweeper = sweeper
        self.launcher = launcher

    def __getattr__(self, name: str) -> Any:
        return getattr(self.launcher, name)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        done = {
            i: self.sweeper.completed_return(ov)
            for i, ov in enumerate(job_overrides)
            if self.sweeper.job_dirs.get(tuple(ov)) in self.sweeper.skipped
        }
        todo = [ov for i, ov in enumerate(job_overrides) if i not in done]
        launched = iter(self.launcher.launch(todo, initial_job_idx=initial_job_idx) if todo else [])
        return [done[i] if i in done else next(launched) for i in range(len(job_overrides))]


class ResumableSweeper(BasicSweeper):
    def __init__(
        self, max_batch_size: int | None = None, params: dict[str, str] | None = None, resume: bool = True
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.resume = resume
        self.job_dirs: dict[tuple[str, ...], str] = {}
        self.skipped: set[str] = set()

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.launcher = _SkipCompleted(self, self.launcher)

    def _all_jobs(self, arguments: list[str]) -> tuple[list[list[str]], list[str]]:
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        parsed = parser.parse_overrides([*self._parse_config(), *arguments])
        jobs = [job for batch in self.split_arguments(parsed, None) for job in batch]
        varying = {
            o.key_or_group for o in parsed if o.is_sweep_override() and len({v for v in o.sweep_string_iterator()}) > 1
        }
        constant = sorted({o.key_or_group for o in parsed} - varying) if varying else []
        return jobs, constant

    def _job_dir(self, overrides: Sequence[str], idx: int) -> tuple[Path, dict[str, Any]]:
        """The job's output dir (the same composition Hydra's run_job does) and its result config."""
        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = idx
            cfg.hydra.job.num = idx
        previous = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(cfg)
        try:
            return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir), rundir.result_config(cfg)
        finally:
            HydraConfig.instance().cfg = previous

    def completed_return(self, overrides: Sequence[str]) -> JobReturn:
        assert self.config is not None
        job_dir = Path(self.config.hydra.sweep.dir) / self.job_dirs[tuple(overrides)]
        metrics = rundir.read_json(job_dir / rundir.METRICS)
        ret = JobReturn(overrides=list(overrides), working_dir=str(job_dir), status=JobStatus.COMPLETED)
        ret.return_value = metrics.get(str(OmegaConf.select(self.config, "optimized_metric", default="")))
        return ret

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None
        jobs, constant = self._all_jobs(arguments)
        self.prepare(jobs, constant)
        return super().sweep(arguments)

    def prepare(self, jobs: Sequence[Sequence[str]], constant: Sequence[str] = ()) -> None:
        """Before launching `jobs`: name their dirs, refuse dirs that hold another config's run, mark completed
        jobs as skipped, list them in sweep.json (also each stage of the compare sweeper)."""
        assert self.config is not None
        if constant:
            # Name dirs (and W&B runs) by what varies: hydra.job.override_dirname without the constant keys.
            excluded = list(self.config.hydra.job.config.override_dirname.exclude_keys or [])
            keys = ",".join(f"'{k}'" for k in dict.fromkeys([*excluded, *constant]))
            with read_write(self.config.hydra.overrides):
                self.config.hydra.overrides.hydra.append(f"hydra.job.config.override_dirname.exclude_keys=[{keys}]")
        sweep_dir = Path(self.config.hydra.sweep.dir)
        subdir = str(OmegaConf.to_container(self.config.hydra.sweep, resolve=False)["subdir"])
        by_number = "job.num" in subdir or "job.id" in subdir
        if by_number and self.resume:
            log.warning(
                "hydra.sweep.subdir=%s names job dirs by number: completed jobs are not skipped "
                "(numbers shift between invocations); use the default subdir to resume",
                subdir,
            )
        entries: list[tuple[str, Sequence[str]]] = []
        configs = {}
        for idx, overrides in enumerate(jobs):
            job_dir, configs[idx] = self._job_dir(overrides, idx)
            dirname = str(job_dir.absolute().relative_to(sweep_dir.absolute()))
            if dirname in {d for d, _ in entries}:
                raise ValueError(
                    f"two jobs of this sweep map to the same dir {dirname!r} "
                    f"(hydra.sweep.subdir={subdir}); include the varying keys in the subdir"
                )
            self.job_dirs[tuple(overrides)] = dirname
            entries.append((dirname, overrides))
        mismatched = {
            d: sweep.identity_mismatch(sweep_dir / d, configs[i], entries[i][1]) for i, (d, _) in enumerate(entries)
        }
        mismatched = {d: keys for d, keys in mismatched.items() if keys}
        if mismatched and self.resume and not by_number:
            log.error("%s", sweep.mismatch_message(sweep_dir, mismatched))
            sys.exit(1)
        if mismatched or not self.resume:
            sweep.move_aside(sweep_dir, [d for d, _ in entries])
        skipped = set()
        if self.resume and not by_number:
            skipped = {d for d, _ in entries if sweep.is_completed(sweep_dir / d)}
            self.skipped |= skipped
        if skipped:
            log.info(
                "resuming %s: %d of %d jobs already completed, launching %d",
                sweep_dir,
                len(skipped),
                len(entries),
                len(entries) - len(skipped),
            )
        sweep.register_invocation(sweep_dir, entries, skipped)
