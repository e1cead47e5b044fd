"""`hydra/sweeper=optuna` (conf/hydra/sweeper/optuna.yaml); the logic lives in `lmlab.launch.optuna_sweeper`.

Hydra registers a plugin by the module that defines it, and only scans `hydra_plugins`: hence this subclass."""

from lmlab.launch.optuna_sweeper import OptunaSweeper as _OptunaSweeper


class OptunaSweeper(_OptunaSweeper):
    pass
