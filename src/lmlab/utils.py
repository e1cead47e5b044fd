"""Console helpers shared by the entry points."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# Shown first, in this order; the rest follow as composed.
_ORDER = ("dataset", "model", "optimizer", "scheduler", "trainer", "callbacks", "logger", "paths")


def print_config(cfg: DictConfig, save_to: Path | None = None) -> None:
    """Print the composed config as a rich tree (one branch per group) and save the same text."""
    import rich.console
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", style="bold", guide_style="dim")
    keys = [k for k in _ORDER if k in cfg] + [k for k in cfg if k not in _ORDER]
    for key in keys:
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(key, style="bold yellow").add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark"))
    console = rich.console.Console(record=True)  # rendered once, for the terminal and the file
    console.print(tree)
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        save_to.write_text(console.export_text())
