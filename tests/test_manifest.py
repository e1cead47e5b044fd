"""The run manifest's package list (pip_freeze.txt) reads metadata headers directly, for speed: it must say what
the standard metadata parser says."""

from __future__ import annotations

import importlib.metadata

from lmlab.rundir import manifest


def test_pip_freeze_agrees_with_the_metadata_parser() -> None:
    expected = {(d.metadata["Name"] or "?"): d.version for d in importlib.metadata.distributions()}
    frozen = dict(line.split("==", 1) for line in manifest.pip_freeze().splitlines())
    assert frozen == expected
    assert frozen["torch"] == importlib.metadata.version("torch")
