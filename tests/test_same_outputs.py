"""tools/same_outputs.py: tensor fingerprints hash the raw bytes with dtype and shape, and the comparison reports
each case as same / DIFFERENT / missing / error (exit 1 on any of the last three). No case is run here."""

import copy
import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "same_outputs.py"


@pytest.fixture(scope="module")
def so():
    spec = importlib.util.spec_from_file_location("same_outputs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(sha, dtype="float32", shape=(2, 3)):
    return {"sha256": sha, "dtype": dtype, "shape": list(shape), "mean": 0.5}


def _file(**cases):
    return {"meta": {"commit": "abc", "dirty": False}, "cases": cases}


BASE = _file(**{
    "sparse/flux/cached": {"tensors": {"output": _record("a" * 64)}, "values": {"pattern_computations": {"l0": 1}}},
    "noise/sd3/optimize": {"tensors": {"images": _record("b" * 64), "latents": _record("c" * 64)},
                           "values": {"result": {"seed": 3, "loss": 1.25}}},
    "cli/image": {"tensors": {"pixels": _record("d" * 64, "uint8", (128, 128, 3))}, "values": {}},
})  # fmt: skip


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_tensor_record_hashes_raw_bytes_with_dtype_and_shape(so):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    rec = so.tensor_record(a)
    assert rec["sha256"] == hashlib.sha256(a.tobytes()).hexdigest()
    assert (rec["dtype"], rec["shape"]) == ("float32", [3, 4])
    assert rec["mean"] == 5.5 and rec["min"] == 0.0 and rec["max"] == 11.0
    assert so.tensor_record(torch.from_numpy(a.copy())) == rec  # a torch tensor of the same data: same record
    assert so.tensor_record(np.asfortranarray(a)) == rec  # memory layout does not matter, the values do
    b = a.copy()
    b[2, 3] = np.nextafter(b[2, 3], np.float32(np.inf))  # one ulp on one element
    assert so.tensor_record(b)["sha256"] != rec["sha256"]
    # same bytes, other dtype or shape: the record differs in those fields
    assert so.tensor_record(a.view(np.int32))["dtype"] == "int32"
    assert so.tensor_record(a.reshape(4, 3))["shape"] == [4, 3]
    frames = [np.full((2, 2, 3), i, dtype=np.uint8) for i in range(3)]  # a list of frames is stacked
    assert so.tensor_record(frames)["shape"] == [3, 2, 2, 3]
    assert so.tensor_record(frames)["sha256"] == hashlib.sha256(np.stack(frames).tobytes()).hexdigest()


def test_equal_files_pass(so, tmp_path, capsys):
    rows = so.compare(BASE, copy.deepcopy(BASE))
    assert [(case, status) for case, status, _ in rows] == [
        ("cli/image", "same"), ("noise/sd3/optimize", "same"), ("sparse/flux/cached", "same")
    ]  # fmt: skip
    assert so.main(["--compare", _write(tmp_path, "a.json", BASE), _write(tmp_path, "b.json", BASE)]) == 0
    out = capsys.readouterr().out
    assert "3 same, 0 DIFFERENT, 0 missing, 0 error of 3 cases" in out


def test_one_changed_tensor_is_reported(so, tmp_path, capsys):
    after = copy.deepcopy(BASE)
    after["cases"]["noise/sd3/optimize"]["tensors"]["latents"]["sha256"] = "e" * 64
    after["cases"]["noise/sd3/optimize"]["tensors"]["latents"]["mean"] = 0.75  # summary numbers alone never count
    rows = {case: (status, detail) for case, status, detail in so.compare(BASE, after)}
    assert rows["noise/sd3/optimize"] == ("DIFFERENT", "latents (sha256)")
    assert rows["sparse/flux/cached"][0] == rows["cli/image"][0] == "same"
    assert so.main(["--compare", _write(tmp_path, "a.json", BASE), _write(tmp_path, "b.json", after)]) == 1
    out = capsys.readouterr().out
    assert "noise/sd3/optimize" in out and "DIFFERENT" in out and "2 same, 1 DIFFERENT" in out


def test_changed_value_dtype_shape_and_extra_keys(so):
    after = copy.deepcopy(BASE)
    after["cases"]["noise/sd3/optimize"]["values"]["result"]["loss"] = 1.2500000001
    after["cases"]["cli/image"]["tensors"]["pixels"]["dtype"] = "float32"
    after["cases"]["cli/image"]["tensors"]["pixels"]["shape"] = [64, 64, 3]
    after["cases"]["sparse/flux/cached"]["tensors"]["output_second_call"] = _record("f" * 64)
    rows = {case: (status, detail) for case, status, detail in so.compare(BASE, after)}
    assert rows["noise/sd3/optimize"][0] == "DIFFERENT" and rows["noise/sd3/optimize"][1].startswith("result (")
    assert rows["cli/image"] == ("DIFFERENT", "pixels (dtype/shape)")
    assert rows["sparse/flux/cached"] == ("DIFFERENT", "tensor output_second_call only after")


def test_missing_and_failed_cases_are_reported(so, tmp_path, capsys):
    after = copy.deepcopy(BASE)
    del after["cases"]["cli/image"]
    after["cases"]["bottleneck/flux/stages"] = {"tensors": {}, "values": {}}
    after["cases"]["sparse/flux/cached"] = {"tensors": {}, "values": {}, "error": "ImportError: no module\ntrace"}
    rows = {case: (status, detail) for case, status, detail in so.compare(BASE, after)}
    assert rows["cli/image"] == ("missing", "not in AFTER")
    assert rows["bottleneck/flux/stages"] == ("missing", "not in BEFORE")
    assert rows["sparse/flux/cached"] == ("error", "after: ImportError: no module")
    assert rows["noise/sd3/optimize"][0] == "same"
    assert so.main(["--compare", _write(tmp_path, "a.json", BASE), _write(tmp_path, "b.json", after)]) == 1
    assert "1 same, 0 DIFFERENT, 2 missing, 1 error of 4 cases" in capsys.readouterr().out


def test_only_restricts_the_comparison(so, tmp_path, capsys):
    after = copy.deepcopy(BASE)
    after["cases"]["cli/image"]["tensors"]["pixels"]["sha256"] = "0" * 64
    a, b = _write(tmp_path, "a.json", BASE), _write(tmp_path, "b.json", after)
    assert [case for case, _, _ in so.compare(BASE, after, ["noise/", "sparse/"])] == [
        "noise/sd3/optimize", "sparse/flux/cached"
    ]  # fmt: skip
    assert so.main(["--compare", a, b, "--only", "noise/", "sparse/"]) == 0
    assert so.main(["--compare", a, b, "--only", "cli/"]) == 1
    assert so.main(["--compare", a, b, "--only", "guidance/"]) == 1  # selects nothing: not a pass
    assert "selects no case" in capsys.readouterr().err


def test_bad_files_are_refused_by_name(so, tmp_path):
    good = _write(tmp_path, "good.json", BASE)
    with pytest.raises(SystemExit, match="no fingerprint file .*nope.json"):
        so.main(["--compare", str(tmp_path / "nope.json"), good])
    (tmp_path / "torn.json").write_text('{"cases": {')
    with pytest.raises(SystemExit, match="torn.json.*not a JSON fingerprint file"):
        so.main(["--compare", str(tmp_path / "torn.json"), good])
    with pytest.raises(SystemExit, match="other.json.*no 'cases' object"):
        so.main(["--compare", _write(tmp_path, "other.json", {"results": []}), good])
    for record in ([], {"tensors": {"output": "abc"}}, {"tensors": {}, "values": {}, "error": 3}):
        with pytest.raises(SystemExit, match="bad.json.*case 'cli/image' is not a fingerprint record"):
            so.main(["--compare", good, _write(tmp_path, "bad.json", _file(**{"cli/image": record}))])


def test_every_fixture_has_its_sparse_and_stock_cases(so):
    from unbottle.testing import IMAGE_FIXTURES, VIDEO_FIXTURES

    names = set(so.cases())
    for family in {**IMAGE_FIXTURES, **VIDEO_FIXTURES}:
        assert f"stock/{family}" in names
        for variant in ("cached", "dynamic", "window", "cached-noreshape"):
            assert f"sparse/{family}/{variant}" in names


def test_batch_runner_comes_from_the_imported_tree(so):
    import unbottle

    module = so.batch_module()
    package = Path(unbottle.__file__).resolve().parent
    assert package in Path(module.__file__).resolve().parents
    assert callable(module.run_batch) and callable(module.BatchConfig)
    assert so.foreign_modules() == []
