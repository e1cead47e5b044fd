"""Evaluate a checkpoint on the split it was trained with, or a model as it is; writes metrics.json + task files.

From a checkpoint, the task, dataset config and data fingerprint come from it, so the numbers reproduce the
training run's test metrics exactly (same weights, same examples, same batches).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from lmlab.config import check_accelerator, config_dir, register_resolvers
from lmlab.errors import LmlabError

log = logging.getLogger("lmlab.eval")
register_resolvers()


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """A checkpoint (the task, data split and model come from it) or, without one, the composed task/dataset/model
    as they are (e.g. a pretrained model's zero-shot numbers), on one split; writes metrics.json + the task's files."""
    import pytorch_lightning as pl

    from lmlab import rundir
    from lmlab.callbacks.progress import TimedRichProgressBar
    from lmlab.config import instantiate
    from lmlab.rundir import check_same_data

    check_accelerator(cfg.accelerator, "accelerator")
    from lmlab.console import phase, quiet_libraries

    quiet_libraries()
    split = cfg.split
    if split not in ("train", "val", "test"):
        raise LmlabError(f"split={split!r} is not one of train, val, test.")
    ckpt = rundir.find_checkpoint(cfg.ckpt_path, "eval") if cfg.get("ckpt_path") else None
    if ckpt is not None:
        info = rundir.checkpoint_meta(ckpt)[1]
        run_config = info.get("config")
        if not run_config:
            raise LmlabError(f"{ckpt} has no lmlab run config; it was not written by lmlab-train.")
        task_cfg, dataset_cfg, model_cfg = (OmegaConf.create(run_config[k]) for k in ("task", "dataset", "model"))
    elif cfg.get("task") is None:
        raise LmlabError(
            "eval.py needs ckpt_path=<run dir | .ckpt>, or task=... with model=... (and dataset=...) to "
            "evaluate a model as it is, e.g. `python eval.py task=causal_lm model=smollm2`."
        )
    else:
        task_cfg, dataset_cfg, model_cfg = cfg.task, cfg.dataset, cfg.model
    if cfg.batch_size:
        dataset_cfg.eval_batch_size = cfg.batch_size
    task = instantiate(task_cfg)
    datamodule = instantiate(dataset_cfg)
    model_dict = OmegaConf.to_container(model_cfg, resolve=True)
    if ckpt is not None:
        with phase(f"loading checkpoint {ckpt}"):
            model = task.load(ckpt, datamodule, model_dict)
        check_same_data(ckpt, info, datamodule)
    else:
        model = task.build(datamodule, model_dict)
    with phase(f"preparing the {split} data (tokenizing, or reading the tokenization cache)"):
        datamodule.setup("test")
    trainer = pl.Trainer(
        accelerator=cfg.accelerator,
        devices=1,
        logger=False,
        callbacks=[TimedRichProgressBar()],
        enable_model_summary=False,
        default_root_dir=cfg.paths.output_dir,
    )
    # The test loop runs on any split; its metric names are re-keyed to the split.
    log.info("evaluating on %s (%d examples)", split, len(datamodule.example_ids(split)))
    result = trainer.test(model, dataloaders=datamodule.loader(split), verbose=False)[0]
    metrics: dict[str, Any] = task.meta()
    for key, value in task.results(model, datamodule, result).items():
        metrics[key.replace("test/", f"{split}/", 1) if key.startswith("test/") else key] = value
    metrics.pop(task.best_key(), None)  # no selection happened here
    metrics["ckpt_path"] = str(ckpt.resolve()) if ckpt else None
    metrics[f"{split}/examples"] = len(datamodule.example_ids(split))
    if ckpt is not None:
        _compare_coverage(run_config, split, metrics[f"{split}/examples"])
    out = Path(cfg.paths.output_dir)
    rundir.write_json(out / rundir.METRICS, metrics)
    task.write_outputs(out, model, datamodule, split)
    log.info(
        "%s -> %s",
        "  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith(f"{split}/") and isinstance(v, float)),
        out / rundir.METRICS,
    )
    return metrics


def _compare_coverage(run_config: dict[str, Any], split: str, examples: int) -> None:
    """Say so when the training run's own numbers for this split covered fewer examples (limit_*_batches)."""
    key = {"train": "limit_train_batches", "val": "limit_val_batches", "test": "limit_test_batches"}[split]
    limit = (run_config.get("trainer") or {}).get(key)
    # Lightning: an int is a number of batches, a float a fraction of them (1.0 = all).
    if limit is not None and not (isinstance(limit, float) and limit == 1.0):
        batch = int((run_config.get("dataset") or {}).get("eval_batch_size") or 1)
        covered = min(examples, int(limit * examples) if isinstance(limit, float) else int(limit) * batch)
        log.warning(
            "the training run's %s metrics covered about %d of the %d %s examples (trainer.%s=%s); this "
            "evaluation covers all %d, so its numbers differ from the run's metrics.json",
            split,
            covered,
            examples,
            split,
            key,
            limit,
            examples,
        )


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def _main(cfg: DictConfig) -> None:
    from lmlab.launch.job import run_task

    run_task(evaluate, cfg)


USAGE = """usage: python eval.py ckpt_path=<run dir | .ckpt> [split=test|val|train] [batch_size=N]
       python eval.py task=<classification|causal_lm> model=<name> [dataset=<name>]   (a model as it is)
eval.py needs ckpt_path=<run dir | .ckpt>, or task=... with model=... to evaluate; `python eval.py --help` lists
the options."""


def main() -> None:
    """`python eval.py ...`: `ckpt_path=` is pre-read (`lmlab.cli`) before Hydra parses it. With nothing to evaluate
    (no checkpoint, no task), the usage is printed and nothing is composed or written."""
    import sys

    from lmlab.cli import preparse

    args = sys.argv[1:]
    if not any(a.startswith("-") or a.lstrip("+").startswith(("ckpt_path=", "task=")) for a in args):
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    sys.argv = preparse(sys.argv, entry="eval")
    _main()


if __name__ == "__main__":
    main()
