"""Attention benchmark: dense SDPA (cuDNN, flash), FlexAttention and our Triton block-sparse kernel.

    python bench/attention.py -o bench/results                 # on a CUDA GPU; the same as `unbottle bench attention`
    python bench/attention.py --quick -o /tmp/out              # 2 shapes × 3 densities
    python bench/attention.py --shapes 32760x12x128 --densities 1,0.1,0.03

A thin wrapper: everything lives in `unbottle.bench.attention` (run.py's docstring says what is measured and how).
Writes attention-<gpu>.json, .md and .png (the plot only where matplotlib is importable).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unbottle.bench.attention import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
