"""`hydra.sweeper._target_` for hparams_search=optuna: hydra-optuna-sweeper 1.3.0, continuable.

Continuing a study (same storage + study name) with the stock sweeper restarts job numbers at 0, so trial
dirs named by number would overwrite the first run's, and a seeded sampler replays the first run's
suggestions. Here job numbers continue at the study's trial count (job num = Optuna trial number), and a
continued study's sampler is re-seeded.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

log = logging.getLogger("lmlab.sweep")


def study_trial_count(storage: Any, study_name: str | None) -> int:
    """Trials already in the study, 0 when storage, database file or study do not exist yet."""
    if storage is None or study_name is None:
        return 0
    import optuna

    url = str(storage)
    if url.startswith("sqlite:///"):
        from pathlib import Path

        if not Path(url.removeprefix("sqlite:///")).is_file():
            return 0  # don't create an empty database just to look
    summaries = optuna.study.get_all_study_summaries(storage=url)
    return next((s.n_trials for s in summaries if s.study_name == study_name), 0)


def fixed_config(impl: Any, arguments: list[str]) -> dict[str, Any]:
    """The study's fixed configuration: the config composed with the command's non-search overrides, without the
    searched keys (they differ per trial by design)."""
    from lmlab import runfiles

    params = impl._parse_sweeper_params_config() + list(arguments)
    searched, _ = create_params_from_overrides(params)
    fixed = [a for a in arguments if a.split("=", 1)[0].lstrip("+~") not in searched]
    # result_config drops the hydra node before resolving, so no per-job Hydra state is needed here (a
    # `${hydra:...}` elsewhere resolves against the sweep's config, which Hydra has set).
    flat = runfiles.result_config(impl.hydra_context.config_loader.load_sweep_config(impl.config, fixed))
    return {k: v for k, v in flat.items() if not any(k == p or k.startswith(p + ".") for p in searched)}


class ContinuableOptunaSweeper(OptunaSweeper):
    def sweep(self, arguments: list[str]) -> None:
        import sys
        from pathlib import Path

        from lmlab import sweep
        from lmlab.config import LmlabError

        impl = self.sweeper
        try:  # a continued study or a second worker must search over the same fixed config
            sweep.check_fixed_config(Path(str(impl.config.hydra.sweep.dir)), fixed_config(impl, arguments),
                                     f"The Optuna study {impl.study_name!r}")
        except LmlabError as err:
            log.error("%s", err)
            sys.exit(1)
        done = study_trial_count(impl.storage, impl.study_name)
        if done:
            impl.job_idx = done
            if hasattr(impl.sampler, "reseed_rng"):
                # Same seed on a continued study = the same first suggestions again; draw fresh ones instead
                # (the continued part is then not reproducible from the seed).
                impl.sampler.reseed_rng()
            log.info("continuing Optuna study %r (%d trials so far) in %s; new trials start at number %d, "
                     "sampler re-seeded", impl.study_name, done, impl.storage, done)
        return super().sweep(arguments)
