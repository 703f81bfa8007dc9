#!/usr/bin/env python
"""Learning check: does vqrl's GRPO teach a random tiny model to judge image quality? (docs/learning.md)

A thin entry to `vqrl.learning.check` (same as `python -m vqrl.learning`):
    python scripts/learning_check.py --quick                              # CPU test preset (tests/test_learning.py)
    python scripts/learning_check.py --gpu --seeds 0 1 2 --out DIR       # one H200: 3 seeds x (standard, refine)
    python scripts/learning_check.py --gpu --seeds 0 1 --smoke --device cpu   # the GPU path at a toy scale
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from vqrl.learning.check import main  # noqa: E402

if __name__ == "__main__":
    main()
