"""End-to-end benchmark: whole-generation wall time, stock vs Bottleneck Sampling (Tian et al., 2025).

    python bench/e2e.py -o bench/results                  # on a CUDA GPU; the same as `unbottle bench e2e`
    python bench/e2e.py --quick -o /tmp/out               # 10 steps (stages scaled alike), 33 frames, 1 repeat
    python bench/e2e.py --cases wan-sparse -o bench/results   # one case (files e2e-<gpu>-wan-sparse.*)

A thin wrapper: everything lives in `unbottle.bench.e2e` (run.py's docstring says what is measured, what is
real-size and what is not). Writes e2e-<gpu>.json and .md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unbottle.bench.e2e import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
