"""A model that can be neither read locally nor downloaded fails in seconds, before torch is imported, and the
run's status.json carries lmlab's message (not Hydra's InstantiationException)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.config.hub import check_loadable, in_hf_cache
from lmlab.errors import LmlabError
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE=1"),
        (
            {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"},
            "the Hugging Face hub (http://127.0.0.1:9) cannot be reached",
        ),
    ],
    ids=["HF_HUB_OFFLINE", "unreachable_endpoint"],
)
def test_offline_model_fails_before_torch_with_the_message_in_status(
    tmp_path: Path, env: dict[str, str], reason: str
) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            str(ROOT / "train.py"),
            "model=bert",
            f"paths.log_dir={tmp_path}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT / "src")},
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    assert "torch" not in imported and "transformers" not in imported  # what takes the seconds it fails within
    assert "Retrying" not in proc.stderr and "Traceback" not in proc.stderr
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed"
    assert status["error"].startswith("LmlabError: Model 'bert-base-uncased' (model.name_or_path) is not a local")
    assert reason in status["error"] and "model=minilm" in status["error"]


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(LmlabError, match=f"model.name_or_path={tmp_path}/my-bert: the directory .* does not exist"):
        check_loadable(f"{tmp_path}/my-bert")
    check_loadable(str(tmp_path))  # an existing directory: transformers reads it (and says what is missing)


def test_a_model_in_the_hf_cache_needs_no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    snapshot = tmp_path / "models--org--cached-model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert not in_hf_cache("org/cached-model")
    (snapshot / "config.json").write_text("{}")
    assert in_hf_cache("org/cached-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_loadable("org/cached-model")  # no error: the cache has it
    with pytest.raises(LmlabError, match="org/other-model"):
        check_loadable("org/other-model")
