"""The data package. `TextDataModule` is imported on first use, so the light modules (readers, hashsplit, shards)
load without torch and Lightning (a shard-building worker or a benchmark subprocess starts in a fraction of the
time)."""

from typing import Any

__all__ = ["MixtureDataModule", "TextDataModule"]


def __getattr__(name: str) -> Any:
    if name == "TextDataModule":
        from lmlab.data.datamodule import TextDataModule

        return TextDataModule
    if name == "MixtureDataModule":  # dataset=mixture
        from lmlab.data.mixture import MixtureDataModule

        return MixtureDataModule
    raise AttributeError(f"module 'lmlab.data' has no attribute {name!r}")
