"""The run dir: the names and formats of what a run writes, its status and lock, what makes two runs the same job,
and the one place that finds checkpoints. train, eval, the sweepers and the report read run dirs through here.

Torch-free at import (checkpoint reads import torch inside the function), so a bad config fails fast.
"""

from lmlab.rundir.checkpoints import *  # noqa: F403
from lmlab.rundir.files import *  # noqa: F403
from lmlab.rundir.identity import *  # noqa: F403
from lmlab.rundir.status import *  # noqa: F403
