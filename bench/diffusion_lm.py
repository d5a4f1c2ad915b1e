"""Diffusion-LM benchmark: LLaDA-8B-shaped generation, dense SDPA vs SparseD (FlexAttention, Triton).

    python bench/diffusion_lm.py -o bench/results                   # on a CUDA GPU; the same as `unbottle bench dlm`
    python bench/diffusion_lm.py --layers 2 --quick -o /tmp/out     # smoke: 2 layers, 8k and 16k, 1–2 minutes
    python bench/diffusion_lm.py --contexts 65536 --sections steps -o bench/results

A thin wrapper: everything lives in `unbottle.bench.dlm` (run.py's docstring says what is measured, the modes, the
step driver and the device-time estimate). Writes dlm-<gpu>.json and .md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unbottle.bench.dlm import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
