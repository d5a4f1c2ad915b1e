"""Probe: explicit TMA-kernel configs (tiles, warps, stages, Triton's warp specialization) vs the autotuned default.

    python bench/probe_tma.py                     # on a Hopper GPU; prints one table, writes probe-tma.json to -o

For each shape and density (random 128-token block masks as `unbottle bench attention` builds them), the TMA path of
`block_sparse_attention_triton` as the engine runs it (autotuned), the same kernel at each explicit config, and
compiled FlexAttention on the same BlockMask: `do_bench` median ms, and each output's max abs error against
FlexAttention's. A config that fails to compile records its error. Used to decide whether a config (for example
`tl.range(..., warp_specialize=True)` on Hopper) earns a place in the autotuner's list.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unbottle.attention_processors.block_mask import pattern_to_block_mask  # noqa: E402
from unbottle.attention_processors.kernels import block_sparse_fwd as fwd  # noqa: E402
from unbottle.bench.attention import median_ms, random_block_pattern, random_qkv  # noqa: E402
from unbottle.bench.measure import error_text  # noqa: E402

SHAPES = ((32760, 12, 128), (32768, 12, 128), (75600, 24, 128), (17776, 48, 64))
DENSITIES = (1.0, 0.1, 0.03)
# (BLOCK_M, BLOCK_N, warps, stages, warp_specialize)
CONFIGS = (
    (128, 128, 8, 2, False), (128, 128, 8, 2, True), (128, 128, 4, 2, True), (128, 64, 4, 3, True),
    (128, 128, 8, 3, True), (128, 64, 8, 3, True), (64, 128, 4, 3, True),
)  # fmt: skip


def probe_shape(shape: str, flex, rows: list, out_dir: Path) -> None:
    """Every density and config of one N×H×D shape (bf16, batch 1)."""
    n, h, d = (int(x) for x in shape.split("x"))
    q, k, v = random_qkv(n, h, d, 0, torch.device("cuda"), torch.bfloat16)  # (1, H, N, D) each
    for density in DENSITIES:
        indices, counts = random_block_pattern(n, h, density, 128, 0, q.device)
        mask = pattern_to_block_mask(indices, counts, 128, n, n)
        ref = flex(q, k, v, block_mask=mask)
        row = {"shape": shape, "density": density}
        row["flex_ms"] = median_ms(lambda m=mask: flex(q, k, v, block_mask=m))
        fwd.block_sparse_attention_triton(q, k, v, mask, return_lse=False)
        row["default_ms"] = median_ms(lambda m=mask: fwd.block_sparse_attention_triton(q, k, v, m, return_lse=False))
        row["default_config"] = {str(key): cfg for key, cfg in fwd.TUNED.items() if key[0] == "tma"}
        for bm, bn, w, s, ws in CONFIGS:
            name = f"{bm}x{bn}/w{w}/s{s}" + ("/ws" if ws else "")
            config = {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": w, "num_stages": s, "warp_specialize": ws}
            out = torch.full_like(q, float("nan"))

            def call(m=mask, o=out, c=config) -> None:
                fwd._launch(q, k, v, m, d**-0.5, o, None, config=c, path="tma")

            try:
                call()
                torch.cuda.synchronize()
                err = float((out.float() - ref.float()).abs().max())
                row[name] = {"ms": median_ms(call), "max_abs_err": err}
            except Exception as e:  # noqa: BLE001 — a config Triton cannot build here: recorded
                row[name] = {"error": error_text(e)[:300]}
        rows.append(row)
        cells = [f"{shape} d={density:g}: flex {row['flex_ms']:.3f}, default {row['default_ms']:.3f}"]
        for key, value in row.items():
            if isinstance(value, dict) and "ms" in value:
                cells.append(f"{key} {value['ms']:.3f} ({value['max_abs_err']:.1e})")
            elif isinstance(value, dict) and "error" in value:
                cells.append(f"{key} ERR {value['error'][:120]}")
        print(" | ".join(cells), flush=True)
        (out_dir / "probe-tma.json").write_text(json.dumps(rows, indent=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="/tmp/probe-tma")
    parser.add_argument("--shapes", default=",".join(f"{n}x{h}x{d}" for n, h, d in SHAPES))
    args = parser.parse_args()
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    rows: list = []
    for shape in args.shapes.split(","):
        probe_shape(shape, flex, rows, out_dir)
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
