"""Training entry point: compose -> check -> seed -> build -> fit -> validate/test the best checkpoint -> write.

Only hydra/omegaconf are imported at module level, so a bad config fails before torch is imported.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from lmlab.config import LmlabError, check_accelerator, config_dir, register_resolvers, validate

log = logging.getLogger("lmlab.train")
register_resolvers()


def instantiate(node: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, but an input error raised by the target reaches the user as itself (Hydra wraps it
    in an InstantiationException, which would print a traceback)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, LmlabError):
            raise cause from None
        if isinstance(cause, TypeError) and "unexpected keyword argument" in str(cause):
            raise LmlabError(f"{err}: remove that key, or check its spelling.") from None
        if type(cause).__name__ == "MisconfigurationException":  # Lightning's word for a bad Trainer argument
            target = node.get("_target_", "") if hasattr(node, "get") else ""
            raise LmlabError(
                f"{cause} (from {target}: check the trainer.* settings, e.g. trainer=cpu on a machine without a GPU)"
            ) from None
        raise


def build(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate task, datamodule, model, callbacks, loggers and trainer from the composed config."""
    from lmlab.callbacks import RunInfo
    from lmlab.callbacks.pruning import optuna_pruning
    from lmlab.distributed import trainer_plugins
    from lmlab.models.init_from import parent_path
    from lmlab.requeue import RequeueOnSignal, wandb_resume_kwargs

    task = instantiate(cfg.task)
    datamodule = instantiate(cfg.dataset)
    model_cfg, optimizer = (OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "optimizer"))
    model_cfg["init_from"] = parent_path(model_cfg.get("init_from"), cfg.get("seed"))  # {seed} -> this seed
    # After init_from: with a parent, the frozen base cannot be rebuilt from the config alone (peft keeps it all).
    model_cfg.update(peft_settings(cfg, task, model_cfg, optimizer))
    model = task.build(
        datamodule, model_cfg, optimizer=optimizer, scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True)
    )
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    callbacks.append(RequeueOnSignal(cfg.paths.output_dir))  # RNG/epoch position in checkpoints; SLURM requeue
    callbacks.extend(optuna_pruning(task.monitor))  # an Optuna trial with hydra.sweeper.pruner on, else none
    callbacks.append(
        RunInfo(
            {
                "config": OmegaConf.to_container(cfg, resolve=True),
                "data_fingerprint": datamodule.data_fingerprint,
                "labels": list(getattr(datamodule, "labels", None) or []) or None,
            }
        )
    )
    loggers = [
        instantiate(c, **wandb_resume_kwargs(cfg.paths.output_dir, c))
        for c in (cfg.get("logger") or {}).values()
        if c and "_target_" in c
    ]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **trainer_plugins(cfg.trainer))
    datamodule.setup("fit")  # the task may size the run from the data (task.max_tokens)
    task.configure_trainer(trainer, datamodule, effective_batch_size(cfg, trainer))
    return {"task": task, "datamodule": datamodule, "model": model, "trainer": trainer}


def peft_settings(cfg: DictConfig, task: Any, model_cfg: dict[str, Any], optimizer: dict[str, Any]) -> dict[str, Any]:
    """`{"peft": ...}` for the task module when cfg.peft turns a method on (with the seed its frozen base is built
    from), else nothing: modules of runs without peft keep their hyperparameters as they were."""
    import inspect

    from lmlab.models import peft as adapters

    peft_cfg = OmegaConf.to_container(cfg.peft, resolve=True) if cfg.get("peft") else None
    adapters.check_combination(peft_cfg, model_cfg, optimizer)
    if not adapters.enabled(peft_cfg):
        return {}
    if "peft" not in inspect.signature(task.module_class()).parameters:
        raise LmlabError(
            f"peft={peft_cfg['method']} is not supported by task={task.name} (its module takes no "
            f"adapters); use it with task=classification or task=causal_lm, or peft=none."
        )
    # A base whose weights come from elsewhere (model.init_from, not a module hyperparameter) cannot be rebuilt from
    # the config: its checkpoints keep the frozen base too.
    return {"peft": {**peft_cfg, "base_seed": int(cfg.seed), "keep_base": bool(model_cfg.get("init_from"))}}


def check_resumable(ckpt: Path, datamodule: Any) -> None:
    """Resuming on other data, or with the labels in another order, would silently remap what the weights mean."""
    from lmlab import runfiles

    info = runfiles.checkpoint_meta(Path(ckpt))[1]
    if not info:
        return
    labels = info.get("labels")
    if labels is not None and list(labels) != list(getattr(datamodule, "labels", None) or []):
        raise LmlabError(
            f"{ckpt} was trained with labels {labels} (in this order), but the data now gives "
            f"{list(datamodule.labels or [])}: the classifier's outputs would mean other classes. "
            f"Resume with the same data and dataset.labels (e.g. dataset.labels=[{','.join(labels)}])."
        )
    if info.get("data_fingerprint"):
        check_same_data(
            ckpt, info, datamodule, "Resume with the same dataset settings, or start a new run without ckpt_path."
        )


def check_same_data(ckpt: Path, info: dict[str, Any], datamodule: Any, fix: str = "") -> None:
    """The data split now must be the one the checkpoint was trained on (its fingerprint), for resume and eval."""
    if datamodule.data_fingerprint != info.get("data_fingerprint"):
        raise LmlabError(
            f"The data differs from what {ckpt} was trained on (fingerprint {datamodule.data_fingerprint}"
            f" now, {info.get('data_fingerprint')} then): the source files or split settings changed."
            + (f" {fix}" if fix else "")
        )


def check_finite(metrics: dict[str, Any], monitor: str) -> None:
    """A run whose selection or test numbers are NaN/inf is a failed run, never a completed one."""
    keys = [monitor, monitor.replace("val/", "test/", 1), "val/loss", "test/loss"]
    bad = {
        k: metrics[k]
        for k in dict.fromkeys(keys)
        if isinstance(metrics.get(k), float) and not math.isfinite(metrics[k])
    }
    if bad:
        raise LmlabError(
            f"the final metrics are not finite ({', '.join(f'{k}={v}' for k, v in bad.items())}): "
            f"training diverged. Lower optimizer.lr (or add trainer.gradient_clip_val=1.0)."
        )


def effective_batch_size(cfg: DictConfig, trainer: Any) -> int:
    return int(cfg.dataset.batch_size) * int(trainer.accumulate_grad_batches) * int(trainer.world_size)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then evaluate the best checkpoint on val and test; returns the metrics written to metrics.json."""
    import pytorch_lightning as pl

    from lmlab import distributed, manifest, requeue, runfiles
    from lmlab.callbacks import perf_summary
    from lmlab.callbacks.throughput import peak_rss_mb
    from lmlab.console import quiet_libraries
    from lmlab.loggers import finish_run
    from lmlab.models.peft import param_counts
    from lmlab.utils import print_config

    run_dir = Path(cfg.paths.output_dir)
    check_accelerator(cfg.trainer.get("accelerator"))
    quiet_libraries()
    if distributed.is_primary_process():
        print_config(cfg, save_to=run_dir / "config_tree.log")
    pl.seed_everything(cfg.seed, workers=True)
    objects = build(cfg)
    task, datamodule, model, trainer = (objects[k] for k in ("task", "datamodule", "model", "trainer"))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    # Of the fit trainer: after DDP, the single-device eval trainer that replaces it has world size 1.
    global_batch = effective_batch_size(cfg, trainer)
    params = param_counts(model)  # comparisons can be matched on trainable parameters (peft=lora vs full)
    log.info(
        "parameters: %d trainable of %d (%.2f%%)",
        params["params/trainable"],
        params["params/total"],
        100 * params["params/trainable"] / max(params["params/total"], 1),
    )
    if trainer.is_global_zero:
        manifest.write_start(run_dir, cfg, datamodule, trainer, global_batch)
    for logger in trainer.loggers:
        logger.log_hyperparams(
            {
                **resolved,
                **params,
                "effective_batch_size": global_batch,
                "data_fingerprint": datamodule.data_fingerprint,
            }
        )

    # An earlier attempt of this same job (run_task checked: same config, unfinished) continues where it stopped,
    # in this dir; otherwise `ckpt_path=` resumes another run's checkpoint into this new dir.
    resume = runfiles.resume_checkpoint(run_dir)
    if resume is None and cfg.get("ckpt_path"):
        if Path(cfg.ckpt_path).resolve() == run_dir.resolve():  # killed before its first checkpoint
            log.info("%s has no checkpoint yet: this attempt starts from the beginning", run_dir)
        else:
            resume = runfiles.find_checkpoint(cfg.ckpt_path, "resume")
    if resume is not None:
        log.info("resuming from %s", resume)
        check_resumable(resume, datamodule)
        if start_from_weights(resume, model):
            resume = None
    with distributed.ddp_children_argv(cfg, trainer):
        trainer.fit(model, datamodule=datamodule, ckpt_path=str(resume) if resume else None)

    # The monitoring checkpoint callback knows the best model; `last_checkpoint` only keeps the latest.
    best = next((c for c in trainer.checkpoint_callbacks if c.monitor and c.best_model_path), None)
    best_path = best.best_model_path if best else None
    if trainer.is_global_zero:
        requeue.requeue_checkpoint(run_dir).unlink(missing_ok=True)
    # Of the fit, before the single-device eval trainer (which has no Throughput callback) replaces it.
    # The epoch of the final weights (0-based, like a checkpoint's): Lightning counts the last epoch as done even
    # when trainer.max_steps ended it early.
    fit_epoch, perf = max(trainer.current_epoch - 1, 0), perf_summary(trainer, model)
    trainer = distributed.eval_trainer(cfg, trainer)  # after DDP: one device, no padded test batches
    if trainer is None:  # a non-zero rank: rank 0 evaluates and writes
        return {}
    # Val and test are both measured on the best checkpoint (or the final weights when none was kept).
    val = trainer.validate(model, datamodule=datamodule, ckpt_path=best_path, verbose=False)[0]
    test = trainer.test(model, datamodule=datamodule, ckpt_path=best_path, verbose=False)[0]
    metrics: dict[str, Any] = task.meta()
    metrics.update(task.results(model, datamodule, {**val, **test}))
    metrics.update(
        {
            "best/epoch": runfiles.checkpoint_meta(Path(best_path))[0] if best_path else fit_epoch,
            "best/ckpt_path": os.path.relpath(best_path, run_dir) if best_path else None,
            "effective_batch_size": global_batch,
            **params,
        }
    )
    metrics.update(perf, **{"perf/peak_rss_mb": peak_rss_mb()})  # peak over the final eval too
    metrics["meta/config_digest"] = runfiles.digest(runfiles.result_config(cfg))
    check_finite(metrics, task.monitor)
    if trainer.is_global_zero:
        runfiles.write_json(run_dir / runfiles.METRICS, metrics)
        task.write_outputs(run_dir, model, datamodule, "test", trainer.loggers)
        if cfg.get("export_model"):
            model.export_pretrained(run_dir / runfiles.EXPORT)
        log.info(
            "%s=%.4f  test: %s  -> %s",
            task.monitor,
            metrics.get(task.monitor, math.nan),
            "  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith("test/") and isinstance(v, float))[
                :300
            ],
            run_dir / runfiles.METRICS,
        )
        manifest.write_end(run_dir)
        compact_run_dir(cfg, run_dir, best_path)
        metrics["perf/disk_bytes"] = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())
        runfiles.write_json(run_dir / runfiles.METRICS, metrics)
        finish_run(trainer.loggers, metrics, run_dir)  # W&B: summary, run files, finish
    return metrics


def start_from_weights(ckpt: Path, model: Any) -> bool:
    """A checkpoint without optimizer state (a best checkpoint under checkpoint_policy=compact, e.g. of a completed
    run whose last.ckpt was removed) cannot resume the optimizer: load its weights; optimizer, scheduler and the
    epoch count start afresh. True when that is what happened."""
    import torch

    checkpoint = torch.load(ckpt, map_location="cpu", mmap=True, weights_only=False)
    if "optimizer_states" in checkpoint:
        return False
    model.load_state_dict(checkpoint["state_dict"])
    log.warning(
        "%s holds weights but no optimizer state (checkpoint_policy=compact): training continues from these "
        "weights with a fresh optimizer, lr schedule and epoch count",
        ckpt,
    )
    return True


def compact_run_dir(cfg: DictConfig, run_dir: Path, best_path: str | None) -> None:
    """checkpoint_policy=compact: a completed run keeps its best checkpoint (weights) and drops last.ckpt, the only
    copy of the optimizer state, which nothing needs once the run is complete."""
    from lmlab import runfiles

    last = run_dir / runfiles.CHECKPOINTS / runfiles.LAST_CKPT
    if (
        cfg.get("checkpoint_policy", "keep") == "compact"
        and best_path
        and last.is_file()
        and last.resolve() != Path(best_path).resolve()
    ):
        last.unlink()


def check_run_dir(run_dir: Path, config: dict[str, Any]) -> None:
    """This run may write into `run_dir` only if the dir is new, or holds an unfinished attempt of this same run
    (same result config), which it then continues. A completed run, another config, or a live process: refused,
    before anything in the dir is touched."""
    from lmlab import runfiles

    if not runfiles.holds_results(run_dir):
        return
    state = runfiles.effective_status(runfiles.read_status(run_dir))
    fix = "start it in a new dir (the default; or another hydra.run.dir / hydra.sweep.dir)"
    if state == "completed":
        raise LmlabError(
            f"{run_dir} already holds a completed run (its metrics.json, checkpoints and status "
            f"would be overwritten): {fix}; to evaluate it, `python eval.py ckpt_path={run_dir}`."
        )
    changes = runfiles.config_changes(run_dir, config)
    if changes is None:
        raise LmlabError(f"{run_dir} holds files of another run whose config is not recorded: {fix}.")
    if changes:
        raise LmlabError(
            f"{run_dir} holds an unfinished run of a different configuration ({'; '.join(changes[:8])}): "
            f"{fix}; or resume that run with the same settings (`ckpt_path={run_dir}`)."
        )
    log.info("%s holds an unfinished attempt of this run (status %s): continuing it there", run_dir, state)


def resume_command(run_dir: Path) -> str:
    """The one command that resumes this interrupted run: the same command with ckpt_path=<run dir>."""
    import shlex

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return "re-issue the same command (the sweep skips completed jobs and resumes this one): " + " ".join(
            shlex.quote(a) for a in ["python", *sys.argv]
        )
    args = [a for a in sys.argv[1:] if not a.lstrip("+").startswith("ckpt_path=")]
    return " ".join(shlex.quote(a) for a in ["python", Path(sys.argv[0]).name, *args, f"ckpt_path={run_dir}"])


def _record_interruption(run_dir: Path, err: Any) -> None:
    """status.json `interrupted` + the resume command; exit 128 + the signal."""
    from lmlab import runfiles

    command = resume_command(run_dir)
    runfiles.update_status(
        run_dir,
        "interrupted",
        signal=str(err),
        error=None,
        checkpoint=str(err.checkpoint or runfiles.resume_checkpoint(run_dir) or ""),
        resume=command,
    )
    log.error(
        "interrupted by %s; %s. Resume with:\n  %s",
        err,
        f"position saved in {err.checkpoint}" if err.checkpoint else "resumes from the last checkpoint",
        command,
    )
    sys.exit(err.exit_code)


def run_task(task: Any, cfg: DictConfig) -> dict[str, Any] | None:
    """Record the job's status around `task` (lock, identity check, heartbeat, signals); in a single run, show
    input errors without a traceback."""
    import signal
    import traceback

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from lmlab import runfiles
    from lmlab.cluster import Interrupted, RequeueExit
    from lmlab.distributed import is_primary_process
    from lmlab.utils import mark_job_start

    mark_job_start()  # perf/time_to_first_batch_s counts from here in the later jobs of a multirun
    run_dir = Path(cfg.paths.output_dir)
    single = not HydraConfig.initialized() or HydraConfig.get().mode == RunMode.RUN
    if not is_primary_process():  # DDP ranks > 0 share rank 0's dir; it alone keeps status.json and talks
        logging.getLogger("lmlab").setLevel(logging.ERROR)
        validate(cfg)
        from lmlab.requeue import Interrupts

        with Interrupts():
            return task(cfg)
    try:  # refused before anything is written into the dir
        lock = runfiles.lock_run_dir(run_dir)
        config = runfiles.result_config(cfg)
        check_run_dir(run_dir, config)
    except LmlabError as err:
        if single:
            log.error("%s", err)
            sys.exit(1)
        raise
    with lock:
        runfiles.update_status(run_dir, "running")
        runfiles.write_resolved(run_dir, config)
        try:
            validate(cfg)  # before torch is imported (lmlab.requeue imports it): a bad config fails in ~1 s
            from lmlab.requeue import Interrupts

            with runfiles.Heartbeat(run_dir), Interrupts():
                result = task(cfg)
        except RequeueExit:  # status.json already says requeued
            raise
        except Interrupted as err:
            _record_interruption(run_dir, err)
        except BaseException as err:
            if type(err).__name__ == "TrialPruned":  # its Optuna pruner stopped it (lmlab.callbacks.pruning)
                runfiles.update_status(run_dir, "pruned", error=None, pruned=str(err))
                log.info("%s", err)
                return None
            if type(err).__name__ == "SIGTERMException":  # Lightning's own handler was active (sanity check)
                _record_interruption(run_dir, Interrupted(signal.SIGTERM))
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            try:
                (run_dir / runfiles.TRACEBACK).write_text(traceback.format_exc())
                runfiles.update_status(
                    run_dir, "failed", error=f"{type(err).__name__}: {message}", traceback_file=runfiles.TRACEBACK
                )
            except (OSError, LmlabError) as status_err:  # e.g. the disk is full: still say what went wrong
                log.error("could not record the failure in %s: %s", run_dir, status_err)
            if isinstance(err, LmlabError) and single:
                log.error("%s", err)
                sys.exit(1)
            raise
        runfiles.update_status(run_dir, "completed")
    return result


def main() -> None:
    """`python train.py ...`: the command line is pre-read (`lmlab.cli`) before Hydra parses it."""
    from lmlab.cli import preparse

    sys.argv = preparse(sys.argv)
    _main()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def _main(cfg: DictConfig) -> float | None:
    metrics = run_task(train, cfg)
    value = (metrics or {}).get(cfg.get("optimized_metric") or "")
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


if __name__ == "__main__":
    main()
