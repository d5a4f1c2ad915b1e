"""`bench/cpu_sparse.py`: a tiny run on the shapes image model writes one row per sparse configuration, each ratio
the sparse time over the dense time of the same run; bad arguments are refused by name."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "cpu_sparse.py"


def load_script():
    spec = importlib.util.spec_from_file_location("cpu_sparse_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_every_configuration(tmp_path):
    bench = load_script()
    assert bench.main(["--kinds", "t2i", "--repeats", "1", "--steps", "1", "-o", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "cpu-sparse-t2i.json").read_text())
    rows = data["rows"]
    combos = {(r["density"], r["pattern"], r["reshape"]) for r in rows}
    assert len(rows) == len(combos) == 12 and {r["block"] for r in rows} == {16}
    for r in rows:
        assert r["ratio_wall"] == pytest.approx(r["sparse_wall_s"] / r["dense_wall_s"])
        assert r["ratio_cpu"] == pytest.approx(r["sparse_cpu_s"] / r["dense_cpu_s"])
        assert r["ratio_wall_min"] == pytest.approx(r["sparse_wall_min_s"] / r["dense_wall_min_s"])
    assert data["meta"]["command"].endswith(f"--kinds t2i --repeats 1 --steps 1 -o {tmp_path}")
    table = (tmp_path / "cpu-sparse-t2i.md").read_text().splitlines()
    assert sum(line.startswith("| t2i |") for line in table) == 12


@pytest.mark.parametrize("args, message", [(["--kinds", "dlm"], "--kinds: 'dlm'"),
                                           (["--repeats", "0"], "--repeats and --steps must be ≥ 1")])  # fmt: skip
def test_bad_arguments_are_refused_by_name(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        load_script().main([*args, "-o", str(tmp_path)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
