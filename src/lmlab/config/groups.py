"""Top-level names of the command line, checked before Hydra reads them (and before torch is imported).

Hydra answers `optimiser=adamw` (a misspelt group) with "To append to your config use +optimiser=adamw"; following
that advice adds an unused `optimiser` key and the run silently keeps the default optimizer. Here an override
whose first name is neither a config group (a dir of conf/) nor a top-level key of the entry's config (conf/train.yaml,
or a key that a `# @package _global_` config such as an experiment adds) is refused, naming the closest real one.

Settings of your own (notes, ids for your scripts) go under the user namespace, which is never refused:
`python train.py +user.note=baseline +user.ticket=42`; they land in the run's config (config_tree.log,
resolved_config.json, the loggers' params) and nothing in lmlab reads them.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from lmlab.errors import LmlabError

USER_NAMESPACE = "user"
# Hydra's own names, always valid on the command line.
_HYDRA = {"hydra"}
_OVERRIDE = re.compile(r"^(?P<prefix>\+{0,2}|~)(?P<name>[A-Za-z_][\w-]*)(?P<rest>[./@=].*|)$", re.S)
_TOP_KEY = re.compile(r"^([A-Za-z_][\w-]*)\s*:")


@cache
def known_names(config_dir: str, config_name: str = "train") -> frozenset[str]:
    """The config groups (dirs of conf/) and the top-level keys of `config_name`.yaml and of every config that
    writes into the global package (experiments, debug, task configs)."""
    root = Path(config_dir)
    names = {p.name for p in root.iterdir() if p.is_dir()} | _HYDRA
    files = [root / f"{config_name}.yaml"]
    files += [p for p in root.rglob("*.yaml") if "@package _global_" in p.read_text()[:2000]]
    for path in files:
        if path.is_file():
            names.update(m.group(1) for line in path.read_text().splitlines() if (m := _TOP_KEY.match(line)))
    names.discard("defaults")
    return frozenset(names)


def check_top_level_names(args: Sequence[str], config_dir: str, config_name: str = "train") -> None:
    """Raise LmlabError for an override whose top-level name is unknown (e.g. `+optimiser=adamw`), with the group
    it probably meant. Flags (`-m`, `--cfg job`) pass; so does `+user.<anything>=`."""
    known = known_names(config_dir, config_name)
    for arg in args:
        if arg.startswith("-") or ("=" not in arg and not arg.startswith("~")):
            continue  # a flag, or a flag's value (`--cfg job`, `--info defaults`)
        match = _OVERRIDE.match(arg)
        if match is None:
            continue  # not a `name=value` override: Hydra's parser says what is wrong with it
        name = match["name"]
        if name in known or name == USER_NAMESPACE:
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        hint = f"Did you mean {close[0]!r} ({arg.replace(match['prefix'] + name, close[0], 1)})? " if close else ""
        raise LmlabError(
            f"{arg!r}: {name!r} is not a config group or top-level setting of {config_name}.yaml, so it would "
            f"change nothing. {hint}Groups and settings: {', '.join(sorted(known - _HYDRA))}. Settings of your "
            f"own go under +{USER_NAMESPACE}.<name>=<value>."
        )
