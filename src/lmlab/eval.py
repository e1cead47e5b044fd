"""Evaluate a checkpoint on the split it was trained with; writes metrics.json and predictions.

The dataset config, label list and data fingerprint come from the checkpoint, so the numbers reproduce the
training run's test metrics exactly (same weights, same examples, same batches).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from lmlab.config import LmlabError, config_dir, register_resolvers

log = logging.getLogger("lmlab.eval")
register_resolvers()


def find_checkpoint(ckpt_path: str) -> Path:
    """A .ckpt file, or a run dir: its best checkpoint (from metrics.json), else checkpoints/last.ckpt."""
    from lmlab import runfiles

    path = Path(ckpt_path)
    if path.is_dir():
        metrics = path / runfiles.METRICS
        best = runfiles.read_json(metrics).get("best/ckpt_path") if metrics.exists() else None
        path = path / best if best else path / runfiles.CHECKPOINTS / "last.ckpt"
    if not path.is_file():
        raise LmlabError(f"ckpt_path={ckpt_path!r}: no checkpoint file at {path}.")
    return path


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import RichProgressBar

    from lmlab import runfiles
    from lmlab.models import TextClassifier

    ckpt = find_checkpoint(cfg.ckpt_path)
    model = TextClassifier.load_from_checkpoint(ckpt, map_location="cpu")
    run_config = model.run_info.get("config")
    if not run_config:
        raise LmlabError(f"{ckpt} has no lmlab run config; it was not written by lmlab-train.")
    dataset_cfg = OmegaConf.create(run_config["dataset"])
    if cfg.batch_size:
        dataset_cfg.eval_batch_size = cfg.batch_size
    datamodule = instantiate(dataset_cfg)
    datamodule.setup()
    if datamodule.data_fingerprint != model.run_info.get("data_fingerprint"):
        raise LmlabError(
            f"The data differs from what {ckpt.name} was trained on (fingerprint {datamodule.data_fingerprint} "
            f"vs {model.run_info.get('data_fingerprint')}): the source files or split settings changed.")
    if datamodule.labels != model.labels:
        raise LmlabError(f"Label map mismatch: data has {datamodule.labels}, checkpoint has {model.labels}.")

    split = cfg.split
    if split not in ("train", "val", "test"):
        raise LmlabError(f"split={split!r} is not one of train, val, test.")
    trainer = pl.Trainer(accelerator=cfg.accelerator, devices=1, logger=False, callbacks=[RichProgressBar()],
                         enable_model_summary=False, default_root_dir=cfg.paths.output_dir)
    # The test loop also collects per-example predictions; its metric names are re-keyed to the split.
    result = trainer.test(model, dataloaders=datamodule.loader(split), verbose=False)[0]
    metrics: dict[str, Any] = {k.replace("test/", f"{split}/", 1): float(v) for k, v in result.items()
                               if not k.endswith("/f1")}
    metrics.update({k.replace("test/", f"{split}/", 1): v for k, v in model.details["test"].items()})
    metrics["ckpt_path"] = str(ckpt.resolve())
    out = Path(cfg.paths.output_dir)
    runfiles.write_json(out / runfiles.METRICS, metrics)
    runfiles.write_predictions(out / f"{split}_predictions.csv", datamodule.example_ids(split),
                               datamodule.labels, model.predictions)
    log.info("%s/f1_macro=%.4f -> %s", split, metrics[f"{split}/f1_macro"], out / runfiles.METRICS)
    return metrics


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> None:
    from lmlab.train import run_task

    run_task(evaluate, cfg)


if __name__ == "__main__":
    main()
