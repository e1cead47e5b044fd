"""`hydra/sweeper=lmlab` (conf/hydra/sweeper/lmlab.yaml); the logic lives in `lmlab.launch.grid_sweeper`.

Hydra registers a plugin by the module that defines it, and only scans `hydra_plugins`: hence this subclass."""

from lmlab.launch.grid_sweeper import ResumableSweeper as _ResumableSweeper


class ResumableSweeper(_ResumableSweeper):
    pass
