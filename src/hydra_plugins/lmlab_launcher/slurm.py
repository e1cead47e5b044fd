"""`hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml); the logic lives in `lmlab.slurm`."""

from lmlab.slurm import SlurmLauncher as _SlurmLauncher


class SlurmLauncher(_SlurmLauncher):
    pass
