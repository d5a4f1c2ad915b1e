"""Noise-search benchmark: seconds and peak memory per CARINOX / ReNO noise-optimization iteration.

    python bench/noise_search.py -o bench/results           # on a CUDA GPU; the same as `unbottle bench noise`
    python bench/noise_search.py --quick -o /tmp/out        # 1 warm-up + 2 timed iterations per row
    python bench/noise_search.py --variants checkpointing --iterations 10 -o bench/results

A thin wrapper: everything lives in `unbottle.bench.noise` (run.py's docstring says what is measured, what is
real-size and what is not). Writes noise-<gpu>.json and .md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unbottle.bench.noise import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
