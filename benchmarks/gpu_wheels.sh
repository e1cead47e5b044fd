#!/usr/bin/env bash
# What benchmarks/gpu_check.py needs on the device machine that its image lacks (the device tool's KINDS.md), in one
# ignored folder to name in `carry` (default .gpu):
#   .gpu/whl     hydra-core, omegaconf (the versions installed here) and antlr4-python3-runtime 4.9.3, omegaconf's
#                pin, which has no wheel on PyPI: built here with `pip wheel` (pure Python, py3-none-any)
#   .gpu/bundle  BBC News text and the MiniLM vocab + config.json, no weights (gpu_check.py --prepare)
# It adds the folder to this checkout's git exclude (so it travels only when carried) and fails when the working tree
# that travels plus the folder exceed the tool's 64 MiB.
#   bash benchmarks/gpu_wheels.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.gpu}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf "$DEST/whl"
mkdir -p "$DEST/whl"
"$PY" -m pip wheel -q --no-deps -w "$DEST/whl" "antlr4-python3-runtime==4.9.3"
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DEST/whl" \
    "hydra-core==$(version hydra-core)" "omegaconf==$(version omegaconf)"
PYTHONPATH=src "$PY" benchmarks/gpu_check.py --prepare "$DEST/bundle" >/dev/null
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF "/${DEST#./}/" "$exclude" 2>/dev/null || echo "/${DEST#./}/" >>"$exclude"
# What travels: tracked + untracked-not-ignored files, plus the carried folder.
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null \
    | awk '{s += $1} END {print s + 0}')
carried=$(du -sb "$DEST" | cut -f1)
total=$((tree + carried))
limit=$((64 * 1024 * 1024))
ls -l "$DEST/whl"
printf 'working tree %.1f MiB + %s %.1f MiB = %.1f MiB (limit 64 MiB)\n' \
    "$(echo "$tree / 1048576" | bc -l)" "$DEST" "$(echo "$carried / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)"
if [ "$total" -gt "$limit" ]; then
    echo "error: over the device tool's 64 MiB carry limit; carry less" >&2
    exit 1
fi
