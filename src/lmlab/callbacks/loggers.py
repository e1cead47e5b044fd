"""Weights & Biases and MLflow wiring: loggers that never prompt or need a server, named and grouped by the sweep
(W&B: a sweep is a group, MLflow: a sweep is an experiment; each job is a run named by its overrides), and the
end-of-run summary + files.

wandb 0.31 asks for an API key on a TTY when none is configured and blocks; the mode is therefore decided
here, before `wandb.init`: an explicit `mode`/WANDB_MODE wins, otherwise online only when a key is configured
(WANDB_API_KEY or a ~/.netrc entry for the W&B host), else offline — and the log says so.
"""

from __future__ import annotations

import logging
import math
import netrc
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytorch_lightning as pl

from lmlab import rundir
from lmlab.errors import LmlabError

log = logging.getLogger("lmlab.loggers")


def wandb_api_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and netrc.netrc(str(path)).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


WANDB_MODES = ("online", "offline", "disabled", "dryrun", "shared")
INIT_TIMEOUT_S = 30  # wandb's default waits 90 s for an unreachable server before failing


def wandb_mode(mode: str | None = None) -> str:
    """online | offline | disabled, decided without ever reaching a login prompt: an explicit online mode with no
    API key fails at once (wandb would prompt on a terminal and block forever)."""
    chosen = mode or os.environ.get("WANDB_MODE")
    if chosen and chosen not in WANDB_MODES:
        raise LmlabError(
            f"W&B mode {chosen!r} (logger.wandb.mode or WANDB_MODE) is not one of {list(WANDB_MODES[:3])}."
        )
    if chosen in ("online", "shared") and not wandb_api_key_configured():
        raise LmlabError(
            f"W&B mode {chosen!r} needs an API key, and none is configured: run `wandb login` (or set "
            f"WANDB_API_KEY), or log locally with logger.wandb.mode=offline and `wandb sync` later."
        )
    if chosen:
        return "offline" if chosen == "dryrun" else chosen
    if wandb_api_key_configured():
        return "online"
    log.warning(
        "W&B: no API key configured (WANDB_API_KEY or ~/.netrc) -> offline mode; the run is saved "
        "locally, upload it later with `wandb sync <run dir>/wandb/offline-run-*`"
    )
    return "offline"


def _hydra_names() -> tuple[str | None, str | None]:
    """(run name, group): the job's override string without the sweep-constant keys; the sweep dir's name."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, None
    hc = HydraConfig.get()
    name = hc.job.get("override_dirname") or None
    group = Path(str(hc.sweep.dir)).name if hc.mode == RunMode.MULTIRUN else None
    return name, group


def wandb_logger(
    project: str = "lmlab",
    save_dir: str | None = None,
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] | None = None,
    job_type: str = "train",
    log_model: bool | str = False,
    mode: str | None = None,
    **kwargs: Any,
) -> Any:
    """A pytorch_lightning WandbLogger (the `_target_` of conf/logger/wandb.yaml)."""
    from pytorch_lightning.loggers import WandbLogger

    default_name, default_group = _hydra_names()
    resolved_mode = wandb_mode(mode)
    if resolved_mode != "online" and log_model:
        log.warning(
            "W&B: log_model=%s needs online mode (mode=%s); checkpoints are not uploaded", log_model, resolved_mode
        )
        log_model = False
    if save_dir:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
    if resolved_mode == "online" and "settings" not in kwargs:
        import wandb

        # A key but no network: fail after INIT_TIMEOUT_S with wandb's own message, not after 90 s.
        kwargs["settings"] = wandb.Settings(init_timeout=INIT_TIMEOUT_S)
    logger = WandbLogger(
        project=project,
        save_dir=save_dir,
        name=name or default_name,
        group=group or default_group,
        tags=list(tags or []),
        job_type=job_type,
        log_model=log_model,
        mode=resolved_mode,
        **kwargs,
    )
    # Lightning always passes anonymous=None to wandb.init, and wandb warns that the setting is deprecated.
    if "anonymous" not in kwargs:
        logger._wandb_init.pop("anonymous", None)
    return logger


MLFLOW_DB = "mlflow.db"  # the local SQLite store under paths.log_dir (MLflow 3 refuses a new file store)
MLFLOW_ARTIFACTS = "mlartifacts"


def _override_tags() -> dict[str, str]:
    """`override.<key>` = value for each of the job's command-line overrides (Hydra's task overrides)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    tags = {}
    for override in HydraConfig.get().overrides.task:
        key, sep, value = str(override).lstrip("+~").partition("=")
        if sep and not key.startswith("hydra"):
            tags[f"override.{key}"] = value
    return tags


def mlflow_logger(
    experiment_name: str = "lmlab",
    tracking_uri: str | None = None,
    save_dir: str | None = None,
    run_name: str | None = None,
    tags: Sequence[str] | None = None,
    log_model: bool = False,
    **kwargs: Any,
) -> Any:
    """A pytorch_lightning MLFlowLogger (the `_target_` of conf/logger/mlflow.yaml). Offline by default: the store is
    `MLFLOW_TRACKING_URI` when set (a lab's server), else SQLite at `<save_dir>/mlflow.db` with artifacts beside it.
    In a multirun the sweep is one experiment (`<experiment_name>/<sweep dir name>`), each job a run named by its
    overrides (like W&B's group and name), tagged `override.<key>=<value>`, `sweep` and `tags`."""
    from pytorch_lightning.loggers import MLFlowLogger

    default_name, sweep = _hydra_names()
    root = Path(save_dir or ".").expanduser().resolve()
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        root.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{root / MLFLOW_DB}"
    experiment = f"{experiment_name}/{sweep}" if sweep else experiment_name
    if uri.startswith("sqlite:") and "artifact_location" not in kwargs:
        kwargs["artifact_location"] = str(root / MLFLOW_ARTIFACTS / experiment)
    run_tags = {**_override_tags(), "tags": ",".join(tags or [])}
    if sweep:
        run_tags["sweep"] = sweep
    if default_name:
        run_tags["overrides"] = default_name
    return MLFlowLogger(
        experiment_name=experiment,
        run_name=run_name or default_name,
        tracking_uri=uri,
        tags=run_tags,
        log_model=log_model,
        **kwargs,
    )


def finish_run(
    loggers: Sequence[Any],
    metrics: Mapping[str, Any],
    run_dir: Path,
    files: Sequence[str] = ("metrics.json", "manifest.json"),
) -> None:
    """Final metrics into each W&B run's summary (MLflow: the run's metrics), the run files attached, then the run
    finished (so the next job of a multirun starts its own run)."""
    from pytorch_lightning.loggers import MLFlowLogger, WandbLogger

    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            _finish_mlflow(logger, metrics, run_dir, files)
        if not isinstance(logger, WandbLogger):
            continue
        run = logger.experiment
        run.summary.update(
            {
                k: v
                for k, v in metrics.items()
                if isinstance(v, (int, float))
                and not isinstance(v, bool)
                and not (isinstance(v, float) and math.isnan(v))
            }
        )
        for name in files:
            if (Path(run_dir) / name).is_file():
                run.save(str(Path(run_dir) / name), base_path=str(run_dir), policy="now")
        run.finish()


def _finish_mlflow(logger: Any, metrics: Mapping[str, Any], run_dir: Path, files: Sequence[str]) -> None:
    client, run_id = logger.experiment, logger.run_id
    final = {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }
    logger.log_metrics(final)
    for name in files:
        if (Path(run_dir) / name).is_file():
            client.log_artifact(run_id, str(Path(run_dir) / name))
    client.set_terminated(run_id, "FINISHED")


def wandb_run_ids(trainer: pl.Trainer | None) -> dict[str, Any]:
    """The W&B run of this attempt (id, offline or not), so the requeued attempt can continue it."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in trainer.loggers if trainer is not None else []:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            return {"wandb_id": run.id, "wandb_offline": bool(getattr(run.settings, "_offline", False))}
    return {}


def wandb_resume_kwargs(run_dir: Path, logger_cfg: Any) -> dict[str, Any]:
    """Extra WandbLogger kwargs for a requeued attempt: the same run id online; offline runs cannot be resumed
    (wandb #2423), so a new offline run (same group, as configured) and a warning saying so."""
    status_path = Path(run_dir) / rundir.STATUS
    if (
        "wandb" not in str(logger_cfg.get("_target_", "")).lower()
        or rundir.resume_checkpoint(run_dir) is None
        or not status_path.exists()
    ):
        return {}
    previous = rundir.read_json(status_path)
    if not previous.get("wandb_id"):
        return {}
    if previous.get("wandb_offline") or os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        log.warning(
            "W&B: offline runs cannot be resumed (wandb #2423); this attempt logs a new offline run in "
            "the same group (previous attempt: %s)",
            previous["wandb_id"],
        )
        return {}
    return {"id": previous["wandb_id"], "resume": "allow"}


def finish_wandb(failed: bool) -> None:
    # A run left open (a job that raised) would otherwise be reused by the next job's WandbLogger.
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)


def log_hyperparams(
    loggers: Sequence[Any], cfg: Any, params: Mapping[str, int], global_batch: int, data_fingerprint: str
) -> None:
    """The resolved config plus what only the built run knows: parameter counts, the global batch, the data."""
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(
            {**resolved, **params, "effective_batch_size": global_batch, "data_fingerprint": data_fingerprint}
        )
