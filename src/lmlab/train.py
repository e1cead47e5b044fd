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

from lmlab.config import LmlabError, config_dir, register_resolvers, validate

log = logging.getLogger("lmlab.train")
register_resolvers()


def resolve_ckpt_path(ckpt_path: str | None) -> str | None:
    """`ckpt_path` may name a checkpoint file or a run dir (meaning its checkpoints/last.ckpt)."""
    if ckpt_path is None:
        return None
    from lmlab import runfiles

    path = Path(ckpt_path)
    if path.is_dir():
        path = path / runfiles.CHECKPOINTS / "last.ckpt"
    if not path.is_file():
        raise LmlabError(f"ckpt_path={ckpt_path!r}: no checkpoint at {path}. Give a .ckpt file or a run dir "
                         f"that has checkpoints/last.ckpt.")
    return str(path)


def build(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate task, datamodule, model, callbacks, loggers and trainer from the composed config."""
    from hydra.utils import instantiate

    from lmlab.callbacks import RunInfo
    from lmlab.distributed import trainer_plugins
    from lmlab.requeue import RequeueOnSignal, wandb_resume_kwargs

    task = instantiate(cfg.task)
    datamodule = instantiate(cfg.dataset)
    model = task.build(datamodule, OmegaConf.to_container(cfg.model, resolve=True),
                       optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
                       scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True))
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    callbacks.append(RequeueOnSignal(cfg.paths.output_dir))  # RNG/epoch position in checkpoints; SLURM requeue
    callbacks.append(RunInfo({"config": OmegaConf.to_container(cfg, resolve=True),
                              "data_fingerprint": datamodule.data_fingerprint}))
    loggers = [instantiate(c, **wandb_resume_kwargs(cfg.paths.output_dir, c))
               for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **trainer_plugins(cfg.trainer))
    datamodule.setup("fit")  # the task may size the run from the data (task.max_tokens)
    task.configure_trainer(trainer, datamodule, effective_batch_size(cfg, trainer))
    return {"task": task, "datamodule": datamodule, "model": model, "trainer": trainer}


def effective_batch_size(cfg: DictConfig, trainer: Any) -> int:
    return int(cfg.dataset.batch_size) * int(trainer.accumulate_grad_batches) * int(trainer.world_size)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then evaluate the best checkpoint on val and test; returns the metrics written to metrics.json."""
    import pytorch_lightning as pl

    from lmlab import distributed, manifest, requeue, runfiles
    from lmlab.callbacks import perf_summary
    from lmlab.callbacks.throughput import peak_rss_mb
    from lmlab.loggers import finish_run
    from lmlab.utils import print_config

    run_dir = Path(cfg.paths.output_dir)
    if distributed.is_primary_process():
        print_config(cfg, save_to=run_dir / "config_tree.log")
    pl.seed_everything(cfg.seed, workers=True)
    objects = build(cfg)
    task, datamodule, model, trainer = (objects[k] for k in ("task", "datamodule", "model", "trainer"))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    # Of the fit trainer: after DDP, the single-device eval trainer that replaces it has world size 1.
    global_batch = effective_batch_size(cfg, trainer)
    if trainer.is_global_zero:
        manifest.write_start(run_dir, cfg, datamodule, trainer, global_batch)
    for logger in trainer.loggers:
        logger.log_hyperparams({**resolved, "effective_batch_size": global_batch,
                                "data_fingerprint": datamodule.data_fingerprint})

    # An interrupted attempt of this same job (SLURM requeue) takes precedence over the configured ckpt_path.
    ckpt_path = requeue.resume_checkpoint(run_dir) or resolve_ckpt_path(cfg.get("ckpt_path"))
    with distributed.ddp_children_argv(cfg, trainer):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)

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
    metrics.update({
        "best/epoch": runfiles.checkpoint_meta(Path(best_path))[0] if best_path else fit_epoch,
        "best/ckpt_path": os.path.relpath(best_path, run_dir) if best_path else None,
        "effective_batch_size": global_batch,
    })
    metrics.update(perf, **{"perf/peak_rss_mb": peak_rss_mb()})  # peak over the final eval too
    if trainer.is_global_zero:
        runfiles.write_json(run_dir / runfiles.METRICS, metrics)
        task.write_outputs(run_dir, model, datamodule, "test", trainer.loggers)
        if cfg.get("export_model"):
            model.export_pretrained(run_dir / runfiles.EXPORT)
        log.info("%s=%.4f  test: %s  -> %s", task.monitor, metrics.get(task.monitor, math.nan),
                 "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                           if k.startswith("test/") and isinstance(v, float))[:300], run_dir / runfiles.METRICS)
        manifest.write_end(run_dir)
        finish_run(trainer.loggers, metrics, run_dir)  # W&B: summary, run files, finish
    return metrics


def run_task(task: Any, cfg: DictConfig) -> dict[str, Any] | None:
    """Record the job's status around `task`; in a single run, show input errors without a traceback."""
    import traceback

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from lmlab import runfiles
    from lmlab.cluster import RequeueExit
    from lmlab.distributed import is_primary_process

    run_dir = Path(cfg.paths.output_dir)
    if not is_primary_process():  # DDP ranks > 0 share rank 0's dir; it alone keeps status.json and talks
        logging.getLogger("lmlab").setLevel(logging.ERROR)
        validate(cfg)
        return task(cfg)
    runfiles.update_status(run_dir, "running")
    try:
        validate(cfg)
        result = task(cfg)
    except RequeueExit:  # status.json already says requeued
        raise
    except BaseException as err:
        (run_dir / runfiles.TRACEBACK).write_text(traceback.format_exc())
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        runfiles.update_status(run_dir, "failed", error=f"{type(err).__name__}: {message}",
                               traceback_file=runfiles.TRACEBACK)
        if isinstance(err, LmlabError) and HydraConfig.get().mode == RunMode.RUN:
            log.error("%s", err)
            sys.exit(1)
        raise
    runfiles.update_status(run_dir, "completed")
    return result


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = run_task(train, cfg)
    value = (metrics or {}).get(cfg.get("optimized_metric") or "")
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


if __name__ == "__main__":
    main()
