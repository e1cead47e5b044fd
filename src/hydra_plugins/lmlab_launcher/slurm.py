"""`hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml); the logic lives in `lmlab.launch.slurm`."""

from lmlab.launch.slurm import SlurmLauncher as _SlurmLauncher


class SlurmLauncher(_SlurmLauncher):
    pass
