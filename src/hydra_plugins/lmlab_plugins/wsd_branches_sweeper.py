"""`hydra/sweeper=wsd_branches` (conf/hydra/sweeper/wsd_branches.yaml); the logic lives in `lmlab.launch.wsd_branches`.

Hydra registers a plugin by the module that defines it, and only scans `hydra_plugins`: hence this subclass."""

from lmlab.launch.wsd_branches import WsdBranchesSweeper as _WsdBranchesSweeper


class WsdBranchesSweeper(_WsdBranchesSweeper):
    pass
