"""Is a model (or tokenizer) loadable at all? Answered in a second, before torch or transformers are imported.

Without this, a hub id with no network fails after ~1 min of huggingface_hub's retries ("Retrying in 8s" x 10),
and a missing local directory is reported as "Repo id must be in the form ...". Order of the checks: a path that
exists; a path that does not (a directory that is not there); the local Hugging Face cache; offline mode
(HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE); one short request to the hub (LMLAB_HUB_TIMEOUT_S, default 3 s).
"""

from __future__ import annotations

import functools
import os
import urllib.error
import urllib.request
from pathlib import Path

from lmlab.errors import LmlabError

FIX = "Use model=minilm (bundled, works offline) or model.name_or_path=<a local directory saved with save_pretrained>."


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def looks_like_path(name: str) -> bool:
    """A hub id is `name` or `org/name`; anything else (absolute, ./, ~, deeper, backslashes) is meant as a path."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name or Path(name).suffix == ".gguf"


def in_hf_cache(repo_id: str) -> bool:
    """Some snapshot of the repo in the local HF cache holds a config or tokenizer file (no network, no import of
    huggingface_hub's download stack)."""
    from huggingface_hub import constants

    snapshots = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    names = ("config.json", "tokenizer_config.json", "tokenizer.json")
    return snapshots.is_dir() and any((snap / n).exists() for snap in snapshots.iterdir() for n in names)


def _hub_error(repo_id: str) -> str | None:
    """None if the hub answers for this repo (or says it needs a token), else why it cannot be used."""
    from huggingface_hub import constants

    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT  # huggingface_hub reads it once, at import
    url = f"{endpoint.rstrip('/')}/api/models/{repo_id}"
    request = urllib.request.Request(url, method="GET", headers={"User-Agent": "lmlab"})
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=float(os.environ.get("LMLAB_HUB_TIMEOUT_S", "3"))):
            return None
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):  # gated or private: transformers says what to do with the token
            return None
        if err.code == 404:
            return f"the Hugging Face hub ({endpoint}) has no model '{repo_id}' (HTTP 404): check the name"
        return None  # the hub answered: let transformers deal with it
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        return f"the Hugging Face hub ({endpoint}) cannot be reached (offline: {reason})"


@functools.lru_cache(maxsize=16)
def check_loadable(name_or_path: str, key: str = "model.name_or_path") -> None:
    """Raise LmlabError, within seconds, when `name_or_path` can be neither read locally nor downloaded."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return
    if looks_like_path(name_or_path):
        raise LmlabError(
            f"{key}={name_or_path}: the directory {path} does not exist. Give a directory saved with "
            f"save_pretrained (it holds config.json), a hub id (e.g. bert-base-uncased), or model=minilm."
        )
    if in_hf_cache(name_or_path):
        return
    if _truthy("HF_HUB_OFFLINE") or _truthy("TRANSFORMERS_OFFLINE"):
        reason = "the Hugging Face hub is switched off (HF_HUB_OFFLINE=1 / TRANSFORMERS_OFFLINE=1: offline)"
    else:
        reason = _hub_error(name_or_path)
        if reason is None:
            return
    raise LmlabError(
        f"Model '{name_or_path}' ({key}) is not a local directory and is not in the local Hugging Face "
        f"cache, and {reason}. {FIX}"
    )
