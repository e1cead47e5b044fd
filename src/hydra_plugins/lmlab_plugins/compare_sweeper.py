"""`hydra/sweeper=compare` (conf/hydra/sweeper/compare.yaml); the logic lives in `lmlab.launch.compare_sweeper`.

Hydra registers a plugin by the module that defines it, and only scans `hydra_plugins`: hence this subclass."""

from lmlab.launch.compare_sweeper import CompareSweeper as _CompareSweeper


class CompareSweeper(_CompareSweeper):
    pass
