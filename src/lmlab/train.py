"""Training entry point: compose -> check -> seed -> build -> fit -> validate/test the best checkpoint -> write.

Only hydra/omegaconf are imported at module level, so a bad config fails before torch is imported.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from lmlab.config import check_accelerator, config_dir, instantiate, register_resolvers
from lmlab.errors import LmlabError
from lmlab.launch.job import run_task

log = logging.getLogger("lmlab.train")
register_resolvers()


def build(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate task, datamodule, model, callbacks, loggers and trainer from the composed config."""
    from lmlab.callbacks import DataPositionLog, RunInfo
    from lmlab.callbacks.eval_schedule import EvalSchedule
    from lmlab.callbacks.loggers import wandb_resume_kwargs
    from lmlab.console import phase
    from lmlab.launch.ddp import trainer_plugins
    from lmlab.launch.nodes import ClusterCheck
    from lmlab.launch.pruning import optuna_pruning
    from lmlab.launch.requeue import RequeueOnSignal
    from lmlab.models.peft import peft_settings  # torch: imported after the config is checked
    from lmlab.rundir.lineage import parent_path

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
    if getattr(datamodule, "log_positions", False):
        callbacks.append(DataPositionLog(cfg.paths.output_dir))  # which global positions each batch read
    callbacks.append(ClusterCheck(cfg.paths.output_dir))  # distributed: one shared run dir; each rank's node
    # The budget in steps, the eval schedule, a validation at the budget's end, curves.csv (the task sets the budget)
    callbacks.append(EvalSchedule(cfg.paths.output_dir))
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
    # A compiled model evaluates under no_grad, as validation during the fit does: under inference_mode (the
    # post-fit validate/test) torch.compile would build and keep a second set of eval graphs (tests/test_compile.py).
    eval_mode = {"inference_mode": False} if cfg.model.get("compile") else {}
    trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, **trainer_plugins(cfg.trainer), **eval_mode
    )
    with phase("preparing the data (tokenizing, or reading the tokenization cache)"):
        datamodule.setup("fit")  # the task may size the run from the data (task.max_tokens)
    task.configure_trainer(trainer, datamodule, effective_batch_size(cfg, trainer))
    return {"task": task, "datamodule": datamodule, "model": model, "trainer": trainer}


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

    from lmlab import rundir
    from lmlab.callbacks import perf_summary
    from lmlab.callbacks.checkpoint import scored_checkpoint
    from lmlab.callbacks.eval_schedule import EvalSchedule
    from lmlab.callbacks.loggers import finish_run, log_hyperparams
    from lmlab.callbacks.throughput import peak_rss_mb
    from lmlab.console import print_config, quiet_libraries
    from lmlab.launch import ddp, nodes
    from lmlab.models.peft import param_counts
    from lmlab.rundir import manifest

    run_dir = Path(cfg.paths.output_dir)
    check_accelerator(cfg.trainer.get("accelerator"))
    nodes.check_allocation(cfg.trainer)  # before anything is built: SLURM/torchrun started the right processes
    nodes.slurm_main_address()
    quiet_libraries()
    if ddp.is_primary_process():
        print_config(cfg, save_to=run_dir / "config_tree.log")
    pl.seed_everything(cfg.seed, workers=True)
    objects = build(cfg)
    task, datamodule, model, trainer = (objects[k] for k in ("task", "datamodule", "model", "trainer"))
    # Of the fit trainer: after DDP, the single-device eval trainer that replaces it has world size 1.
    global_batch = effective_batch_size(cfg, trainer)
    params = param_counts(model)  # comparisons can be matched on trainable parameters (peft=lora vs full)
    trainable, total = params["params/trainable"], params["params/total"]
    log.info("parameters: %d trainable of %d (%.2f%%)", trainable, total, 100 * trainable / max(total, 1))
    if trainer.is_global_zero:
        manifest.write_start(run_dir, cfg, datamodule, trainer, global_batch)
    log_hyperparams(trainer.loggers, cfg, params, global_batch, datamodule.data_fingerprint)

    resume = rundir.resume_point(run_dir, cfg.get("ckpt_path"), datamodule, model)
    with ddp.ddp_children_argv(cfg, trainer):
        trainer.fit(model, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    best_path, best = rundir.after_fit(trainer, run_dir)
    best_path, best = scored_checkpoint(
        trainer, run_dir, task.score, cfg.get("checkpoint_policy", "keep"), best_path, best
    )
    perf = perf_summary(trainer, model)  # of the fit, before the eval trainer (no Throughput callback) replaces it
    perf.update(EvalSchedule.find(trainer).summary(trainer, model))  # budget/*, perf/model_flops
    trainer = ddp.eval_trainer(cfg, trainer)  # after DDP: one device, no padded test batches
    if trainer is None:  # a non-zero rank: rank 0 evaluates and writes
        return {}

    # Val and test are both measured on the scored checkpoint (task.score: the best, or the end of the budget).
    log.info("evaluating %s on val and test", best["best/ckpt_path"] or "the final weights")
    val = trainer.validate(model, datamodule=datamodule, ckpt_path=best_path, verbose=False)[0]
    test = trainer.test(model, datamodule=datamodule, ckpt_path=best_path, verbose=False)[0]
    metrics: dict[str, Any] = task.meta()
    metrics.update(task.results(model, datamodule, {**val, **test}))
    metrics.update(best, effective_batch_size=global_batch, **params)
    metrics.update(perf, **{"perf/peak_rss_mb": peak_rss_mb()})  # peak over the final eval too
    metrics["meta/config_digest"] = rundir.digest(rundir.result_config(cfg))
    check_finite(metrics, task.monitor)
    if trainer.is_global_zero:
        rundir.write_json(run_dir / rundir.METRICS, metrics)
        task.write_outputs(run_dir, model, datamodule, "test", trainer.loggers)
        if cfg.get("export_model"):
            model.export_pretrained(run_dir / rundir.EXPORT)
        tests = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith("test/") and isinstance(v, float))
        log.info("%s=%.4f  test: %s  -> %s", task.monitor, metrics.get(task.monitor, math.nan), tests[:300],
                 run_dir / rundir.METRICS)  # fmt: skip
        rundir.compact_run_dir(cfg, run_dir, best_path)
        manifest.finish_run_dir(run_dir, metrics)
        finish_run(trainer.loggers, metrics, run_dir)  # W&B: summary, run files, finish
    return metrics


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
