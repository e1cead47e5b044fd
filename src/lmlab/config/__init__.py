"""Configuration: where the configs live, their resolvers, argument names, and the checks that run before any
heavy import (torch, transformers, Lightning), so that a bad config fails in about a second."""

from lmlab.config.instantiate import instantiate
from lmlab.config.paths import config_dir, package_path
from lmlab.config.resolvers import gpu_precision, register_resolvers
from lmlab.config.validate import (
    check_accelerator,
    check_checkpoint_policy,
    check_mode,
    time_interval,
    token_counts,
    validate,
)

__all__ = [
    "check_accelerator",
    "check_checkpoint_policy",
    "check_mode",
    "config_dir",
    "gpu_precision",
    "instantiate",
    "package_path",
    "register_resolvers",
    "time_interval",
    "token_counts",
    "validate",
]
