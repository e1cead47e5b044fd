"""`python eval.py ckpt_path=<ckpt>` from the repo root; the same as the `lmlab-eval` command."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # works before `pip install -e .` too

from lmlab.eval import main  # noqa: E402

if __name__ == "__main__":
    main()
