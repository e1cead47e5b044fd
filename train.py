"""`python train.py [overrides]` from the repo root; the same as the `lmlab-train` command."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # works before `pip install -e .` too

from lmlab.train import main  # noqa: E402

if __name__ == "__main__":
    main()
