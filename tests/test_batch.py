"""Reward-scored batches (`unbottle batch`, `unbottle.batch`): counts and ranking, determinism,
SIGKILL and resume, refusal of changed arguments and of crafted records, one run per folder (a second waits, or
refuses with --no-wait), and 2 processes under `accelerate launch` = 1 process.

The embedded shapes model runs at 32 px and 2 steps; the rewards are fakes (colour statistics) except in the one
test of the shipped shapes-clip reward, so the engine's logic is what is tested, fast.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import unbottle  # noqa: E402
import unbottle.shapes  # noqa: E402
from unbottle import batch as rb  # noqa: E402
from unbottle.cli import main  # noqa: E402
from unbottle.rewards import Reward  # noqa: E402

PROMPTS = ["a red circle", "a blue square to the left of a green star", "a large yellow triangle"]
CALL = {"height": 32, "width": 32, "num_inference_steps": 2, "guidance_scale": 4.0}  # = the CLI flags below
SIZE = ["--steps", "2", "--height", "32", "--width", "32", "-q"]
TESTS = Path(__file__).resolve().parent


# ---- fake rewards (also installed by the subprocess driver) -------------------------------------------------------


class ChannelReward(Reward):
    """A fake reward: how much one colour channel dominates (raw in [-1, 1]; unit = (raw + 1) / 2)."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.channel = channel

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        assert images.ndim == 4 and images.shape[1] == 3 and len(prompts) == images.shape[0]
        assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
        others = [c for c in range(3) if c != self.channel]
        return images[:, self.channel].mean((1, 2)) - images[:, others].mean((1, 2, 3))

    def unit(self, scores: torch.Tensor) -> torch.Tensor:
        return (scores + 1.0) / 2.0


FAKES = {"red": 0, "green": 1, "blue": 2}


def _loader(channel):
    return lambda path=None, device=None, dtype=None, **kwargs: ChannelReward(channel)


def install_fake_rewards(setitem=None):
    """Register the fake rewards "red", "green", "blue" (`setitem`: e.g. a monkeypatch's, to undo it after)."""
    for name, channel in FAKES.items():
        if setitem is None:
            unbottle.rewards.register_reward(name, _loader(channel), replace=True)
        else:
            setitem(unbottle.rewards.REWARDS, name, _loader(channel))


DRIVER = f"""import sys
sys.path.insert(0, {str(TESTS)!r})
import test_batch
test_batch.install_fake_rewards()
from unbottle.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def fake_rewards(monkeypatch):
    install_fake_rewards(monkeypatch.setitem)


@pytest.fixture(scope="module")
def pipe():
    pipe = unbottle.shapes.load_pipeline("t2i")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _fakes(*names):
    return {name: ChannelReward(FAKES[name]) for name in names}


def _pixels(path):
    return np.array(Image.open(path).convert("RGB"))


def _shard_lines(out):
    return [json.loads(line) for p in rb.shard_paths(out) for line in p.read_text().splitlines() if line.strip()]


def _prompts_file(tmp_path, prompts=PROMPTS, name="prompts.txt"):
    path = tmp_path / name
    path.write_text("# shapes prompts\n\n" + "\n".join(f"  {p}  " for p in prompts) + "\n\n# the end\n")
    return path


def _error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


# ---- the engine ---------------------------------------------------------------------------------------------------


def test_every_candidate_is_scored_ranked_and_reported(pipe, tmp_path):
    config = rb.BatchConfig(n=3, rewards={"red": 2.0, "blue": 1.0}, seed=7, batch_size=2)

    def blue(images, prompts):  # a plain callable without `unit`: its raw score counts
        return images[:, 2].mean((1, 2))

    rewards = {"red": ChannelReward(0), "blue": blue}
    result = rb.run_batch(pipe, PROMPTS, tmp_path / "out", config, rewards=rewards, call_kwargs=CALL, progress=False)
    out = tmp_path / "out"
    assert result.generated == 9 and result.resumed == 0
    all_pairs = [(i, j) for i in range(3) for j in range(3)]
    assert [(r["prompt_index"], r["candidate"]) for r in result.records] == all_pairs
    lines = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert lines == result.records and len(_shard_lines(out)) == 9
    for r in result.records:
        assert r["seed"] == 7 + r["candidate"] and r["prompt"] == PROMPTS[r["prompt_index"]]
        assert r["combined"] == pytest.approx(2.0 * r["units"]["red"] + r["scores"]["blue"], abs=1e-6)
        assert r["units"]["red"] == pytest.approx((r["scores"]["red"] + 1) / 2, abs=1e-6)
        assert r["units"]["blue"] == r["scores"]["blue"]
        image = _pixels(out / r["image"])
        assert image.shape == (32, 32, 3)
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0  # the score is of the 8-bit image
        assert r["scores"]["red"] == pytest.approx(float(ChannelReward(0)(pixels, ["x"])[0]), abs=1e-6)
    ranking = json.loads((out / "ranking.json").read_text())
    assert ranking["complete"] and ranking["rewards"] == {"red": 2.0, "blue": 1.0}
    html = (out / "index.html").read_text()
    for i, entry in enumerate(ranking["prompts"]):
        mine = [r for r in result.records if r["prompt_index"] == i]
        expected = sorted(mine, key=lambda r: (-r["combined"], r["candidate"]))
        by_rank = sorted(mine, key=lambda r: r["rank"])
        assert entry["order"] == [r["candidate"] for r in expected] == [r["candidate"] for r in by_rank]
        assert entry["best"]["candidate"] == expected[0]["candidate"] and expected[0]["rank"] == 1
        assert entry["best"]["combined"] == max(r["combined"] for r in mine)
        # the contact sheet shows this prompt's candidates best first
        section = html.split(f"<h2>#{i} ")[1].split("<h2>")[0]
        shown = [section.index(f"p{i:05d}_c{j:02d}.png") for j in entry["order"]]
        assert shown == sorted(shown)
    assert result.ranking == ranking["prompts"]


def test_same_seed_same_images_and_batch_size_one_is_unbottle_image(pipe, tmp_path, fake_rewards):
    prompts = PROMPTS[:2]
    runs = {}
    for name, seed, batch in (("a", 5, 3), ("b", 5, 3), ("c", 6, 3), ("one", 5, 1)):
        config = rb.BatchConfig(n=3, rewards={"red": 1.0}, seed=seed, batch_size=batch)
        runs[name] = rb.run_batch(pipe, prompts, tmp_path / name, config, rewards=_fakes("red"), call_kwargs=CALL,
                                  progress=False)  # fmt: skip
    for ra, rb_, rc, r1 in zip(*(runs[k].records for k in ("a", "b", "c", "one")), strict=True):
        a, b = _pixels(tmp_path / "a" / ra["image"]), _pixels(tmp_path / "b" / rb_["image"])
        np.testing.assert_array_equal(a, b)  # same seed, same image
        assert ra["scores"] == rb_["scores"]
        assert not np.array_equal(a, _pixels(tmp_path / "c" / rc["image"]))  # seeds shift by one: 6, 7, 8
        one = _pixels(tmp_path / "one" / r1["image"]).astype(int)
        assert np.abs(one - a).max() <= 2  # other batch size: the same image up to float rounding
    # candidate 2 of prompt 1 (seed 5 + 2) is `unbottle image PROMPT --seed 7`, bit for bit at batch size 1
    single = tmp_path / "single.png"
    assert main(["image", prompts[1], "--seed", "7", "-o", str(single), *SIZE]) == 0
    np.testing.assert_array_equal(_pixels(single), _pixels(tmp_path / "one" / rb.image_name(1, 2)))


def test_torn_line_orphan_image_missing_image_and_tmp_file_are_redone(pipe, tmp_path):
    config = rb.BatchConfig(n=2, rewards={"green": 1.0}, seed=0, batch_size=2)
    kwargs = dict(rewards=_fakes("green"), call_kwargs=CALL, progress=False)
    reference = rb.run_batch(pipe, PROMPTS, tmp_path / "ref", config, **kwargs)
    out = tmp_path / "out"
    shutil.copytree(tmp_path / "ref", out)
    shard = out / "scores.rank0.jsonl"
    lines = shard.read_text().splitlines(keepends=True)
    (out / rb.image_name(0, 1)).unlink()  # a finished line whose image went missing: made again
    (out / rb.image_name(2, 0)).write_bytes(b"not a png")  # an image whose line never came: made again
    shard.write_text("".join(lines[:4]) + lines[4][: len(lines[4]) // 2])  # lines 5, 6 lost; line 5 torn
    (out / "images" / "p00002_c01.png.tmp123").write_bytes(b"half")
    for name in ("scores.jsonl", "ranking.json", "index.html"):
        (out / name).unlink()
    resumed = rb.run_batch(pipe, PROMPTS, out, config, **kwargs)
    assert resumed.resumed == 3 and resumed.generated == 3  # (0, 1), (2, 0), (2, 1)
    records = _shard_lines(out)
    assert sorted((r["prompt_index"], r["candidate"]) for r in records) == [(i, j) for i in range(3) for j in range(2)]
    assert not list((out / "images").glob("*.tmp*"))
    for r, ref in zip(resumed.records, reference.records, strict=True):
        np.testing.assert_array_equal(_pixels(out / r["image"]), _pixels(tmp_path / "ref" / ref["image"]))
        assert r["scores"] == ref["scores"] and r["combined"] == ref["combined"]
    assert (out / "index.html").exists() and json.loads((out / "ranking.json").read_text())["complete"]
    again = rb.run_batch(pipe, PROMPTS, out, config, **kwargs)  # finished: nothing to do, reports rewritten
    assert again.generated == 0 and again.resumed == 6 and len(_shard_lines(out)) == 6


def test_crafted_records_are_dropped_said_and_made_again(pipe, tmp_path):
    config = rb.BatchConfig(n=2, rewards={"green": 1.0}, seed=3, batch_size=2)
    kwargs = dict(rewards=_fakes("green"), call_kwargs=CALL, progress=False)
    rb.run_batch(pipe, PROMPTS, tmp_path / "ref" / "out", config, **kwargs)
    ref, out = tmp_path / "ref" / "out", tmp_path / "x" / "out"
    shutil.copytree(ref, out)
    for name in ("scores.jsonl", "ranking.json", "index.html"):
        (out / name).unlink()
    outside = tmp_path / "afile"  # = out/../../afile: a real image, outside the output folder
    shutil.copy(ref / rb.image_name(0, 0), outside)
    good = {(r["prompt_index"], r["candidate"]): r for r in _shard_lines(out)}

    def edit(i, j, **changes):
        return {**good[i, j], **changes}

    (out / rb.image_name(1, 0)).unlink()
    (out / rb.image_name(1, 0)).symlink_to(outside)
    crafted = [  # after the genuine lines, which they would replace if they counted
        (edit(0, 0, image="../../afile", combined=9.0, units={"green": 9.0}), "image path"),
        (edit(0, 0, image=str(outside)), "image path"),
        (edit(1, 0), "link"),  # the canonical path, but the image is a symlink to a file outside
        (edit(0, 1, prompt=PROMPTS[2]), "prompt text"),
        (edit(0, 1, image="images/p00000_c01.png' onerror='alert(1)"), "image path"),
        (edit(1, 1, seed=3), "seed"),
        (edit(1, 1, combined=good[1, 1]["combined"] + 1.0), "combined"),
        (edit(2, 0, scores={"blue": 0.1}, units={"blue": 0.55}, combined=0.55), "reward names"),
        (edit(2, 1, scores={"green": float("nan")}), "not finite"),
        (edit(2, 1, units={"green": "0.5"}), "not finite"),
        (edit(2, 1, prompt_index=3), "prompt_index out of range"),
        (edit(2, 1, candidate=2, seed=5), "candidate out of range"),
    ]
    redo = [(0, 0), (1, 0), (2, 1)]  # their genuine lines are gone: only crafted ones remain
    lines = [r for key, r in good.items() if key not in redo] + [r for r, _ in crafted]
    (out / "scores.rank0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    said = []
    result = rb.run_batch(pipe, PROMPTS, out, config, log=said.append, **kwargs)
    dropped = [line for line in said if line.startswith("dropped")]
    assert len(dropped) == 1 and dropped[0].startswith(f"dropped 12 records of {out} that do not match this run (")
    assert "made again" in dropped[0]
    for _, reason in crafted:
        assert reason in dropped[0], (reason, dropped[0])
    assert result.resumed == 3 and result.generated == 3
    assert outside.read_bytes() == (ref / rb.image_name(0, 0)).read_bytes()  # untouched
    assert not (out / rb.image_name(1, 0)).is_symlink()
    # the reports are exactly those of the clean run (the folders are both named "out")
    for name in ("scores.jsonl", "ranking.json", "index.html"):
        assert (out / name).read_text() == (ref / name).read_text(), name
    for r in result.records:
        np.testing.assert_array_equal(_pixels(out / r["image"]), _pixels(ref / r["image"]))
    canonical = {rb.image_name(i, j) for i in range(3) for j in range(2)}
    linked = re.findall(r"(?:href|src)='([^']*)'", (out / "index.html").read_text())
    assert len(linked) == 12 and set(linked) == canonical
    ranking = json.loads((out / "ranking.json").read_text())["prompts"]
    assert [e["best"]["image"] for e in ranking] == [rb.image_name(i, e["order"][0]) for i, e in enumerate(ranking)]
    assert sorted((r["prompt_index"], r["candidate"]) for r in _shard_lines(out)) == sorted(good)  # compacted
    said.clear()
    again = rb.run_batch(pipe, PROMPTS, out, config, log=said.append, **kwargs)
    assert again.generated == 0 and not [line for line in said if line.startswith("dropped")]


def test_records_of_another_reward_set_or_a_linked_images_folder_do_not_count(pipe, tmp_path, capsys):
    config = rb.BatchConfig(n=2, rewards={"red": 1.0}, batch_size=2)
    rb.run_batch(pipe, PROMPTS[:1], tmp_path / "out", config, rewards=_fakes("red"), call_kwargs=CALL,
                 progress=False)  # fmt: skip
    out = tmp_path / "out"
    assert sorted(rb.load_records(out, PROMPTS[:1], config)) == [(0, 0), (0, 1)]
    other = rb.BatchConfig(n=2, rewards={"blue": 1.0}, batch_size=2)
    assert rb.load_records(out, PROMPTS[:1], other) == {}
    assert rb.load_records(out, PROMPTS[1:2], config) == {}  # another prompt at index 0
    shutil.move(out / "images", tmp_path / "elsewhere")
    (out / "images").symlink_to(tmp_path / "elsewhere")  # every image now resolves outside the folder
    assert rb.load_records(out, PROMPTS[:1], config) == {}
    assert len(rb.load_records(out, PROMPTS[:1], config, require_images=False)) == 2
    with pytest.raises(ValueError, match="images.*links outside the output folder"):
        rb.run_batch(pipe, PROMPTS[:1], out, config, rewards=_fakes("red"), call_kwargs=CALL, progress=False)
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "images").symlink_to(tmp_path / "elsewhere")
    assert main(["batch", str(_prompts_file(tmp_path)), "-o", str(tmp_path / "cli"), *SIZE]) == 2
    err = _error(capsys)
    assert "-o/--output" in err and "images" in err and "links outside the output folder" in err, err


def test_resume_with_other_arguments_is_refused(pipe, tmp_path):
    config = rb.BatchConfig(n=2, rewards={"red": 1.0}, batch_size=2)
    kwargs = dict(rewards=_fakes("red", "blue"), progress=False)
    rb.run_batch(pipe, PROMPTS[:1], tmp_path, config, call_kwargs=CALL, **kwargs)
    before = (tmp_path / "scores.rank0.jsonl").read_bytes()
    changes = [
        ({"prompts": PROMPTS[1:2]}, "prompts_sha256"),
        ({"config": rb.BatchConfig(n=3, rewards={"red": 1.0}, batch_size=2)}, "n"),
        ({"config": rb.BatchConfig(n=2, rewards={"red": 1.0}, seed=1, batch_size=2)}, "seed"),
        ({"config": rb.BatchConfig(n=2, rewards={"red": 1.0, "blue": 1.0}, batch_size=2)}, "rewards.blue"),
        ({"call_kwargs": {**CALL, "num_inference_steps": 3}}, "call.num_inference_steps"),
        ({"model": "another/model"}, "model"),
    ]
    for change, key in changes:
        args = {"prompts": PROMPTS[:1], "config": config, "call_kwargs": CALL, **change}
        with pytest.raises(rb.ResumeMismatchError, match="new output folder") as e:
            rb.run_batch(pipe, args["prompts"], tmp_path, args["config"], call_kwargs=args["call_kwargs"],
                         model=change.get("model"), **kwargs)  # fmt: skip
        assert key in [k for k, _, _ in e.value.differences], (key, e.value.differences)
    assert (tmp_path / "scores.rank0.jsonl").read_bytes() == before


def test_batch_config_and_prompts_file_validation(tmp_path):
    for kwargs, field, shown in [
        ({"n": 0}, "n", "≥ 1, got 0"), ({"n": 2.5}, "n", "2.5"), ({"batch_size": 0}, "batch_size", "≥ 1"),
        ({"seed": -1}, "seed", "[0, 2**63 - n]"), ({"rewards": {}}, "rewards", "at least one"),
        ({"rewards": {"clip": float("nan")}}, "rewards", "finite"), ({"rewards": {"": 1.0}}, "rewards", "pair"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=field) as e:
            rb.BatchConfig(**kwargs)
        assert e.value.field == field and shown in str(e.value)
    assert rb.BatchConfig().weights == {unbottle.rewards.DEFAULT: 1.0}
    config = rb.BatchConfig(n=2, rewards={"clip": 2, "hps": 1.0}, seed=3)
    assert config.rewards == (("clip", 2.0), ("hps", 1.0)) and config.weights == {"clip": 2.0, "hps": 1.0}
    with pytest.raises(AttributeError):
        config.n = 3  # frozen
    assert rb.read_prompts(_prompts_file(tmp_path)) == PROMPTS
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        rb.read_prompts(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("# only a comment\n\n   \n")
    with pytest.raises(ValueError, match="empty.txt.*no prompts"):
        rb.read_prompts(tmp_path / "empty.txt")


# ---- the command line ---------------------------------------------------------------------------------------------


def test_cli_batch_writes_resumes_and_refuses_changed_arguments(tmp_path, fake_rewards, capsys):
    prompts, out = _prompts_file(tmp_path), tmp_path / "out"
    args = ["batch", str(prompts), "--n", "2", "--rewards", "red:2,blue", "-o", str(out), "--batch-size", "2", *SIZE]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(records) == 6 and {r["prompt"] for r in records} == set(PROMPTS)
    assert all(r["combined"] == pytest.approx(2 * r["units"]["red"] + r["units"]["blue"], abs=1e-6) for r in records)
    run = json.loads((out / "run.json").read_text())
    assert run["n"] == 2 and run["rewards"] == {"red": 2.0, "blue": 1.0} and run["model"] == "embedded:image"
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    capsys.readouterr()
    assert main(args) == 0  # a finished batch: resumed, nothing made again
    assert "6 from before" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == mtimes
    shard = (out / "scores.rank0.jsonl").read_bytes()
    other_prompts = _prompts_file(tmp_path, PROMPTS[::-1], "other.txt")
    for change, named in [
        (["--n", "3"], "--n"), (["--seed", "1"], "--seed"), (["--rewards", "red"], "--rewards"),
        (["--steps", "3"], "--steps"), (["--batch-size", "1"], "--batch-size"), (["PROMPTS"], "PROMPTS.txt"),
    ]:  # fmt: skip
        changed = list(args)
        if change == ["PROMPTS"]:
            changed[1] = str(other_prompts)
        elif change[0] in changed:
            changed[changed.index(change[0]) + 1] = change[1]
        else:
            changed += change
        assert main(changed) == 2, change
        err = _error(capsys)
        assert named in err and "new -o" in err, err
    assert (out / "scores.rank0.jsonl").read_bytes() == shard


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--rewards", "red:x"], "--rewards"),
        (["--rewards", "nope"], "--rewards"),
        (["--seed", str(2**63 - 1)], "--seed"),  # candidate j > 0 would pass the largest seed
        (["--height", "33"], "--height"),
    ],
)
def test_cli_batch_bad_arguments_name_the_option(extra, named, tmp_path, fake_rewards, capsys):
    out = tmp_path / "out"
    assert main(["batch", str(_prompts_file(tmp_path)), "-o", str(out), *SIZE[:-3], *extra]) == 2
    assert named in _error(capsys)
    assert not list(out.glob("scores*"))


def test_cli_batch_prompts_file_and_output_errors(tmp_path, fake_rewards, capsys):
    assert main(["batch", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "o")]) == 2
    err = _error(capsys)
    assert "PROMPTS.txt" in err and "missing.txt" in err
    (tmp_path / "blank.txt").write_text("\n# nothing here\n")
    assert main(["batch", str(tmp_path / "blank.txt"), "-o", str(tmp_path / "o")]) == 2
    assert "blank.txt" in (err := _error(capsys)) and "no prompts" in err
    (tmp_path / "file").write_text("x")
    assert main(["batch", str(_prompts_file(tmp_path)), "-o", str(tmp_path / "file")]) == 2
    assert "-o/--output" in _error(capsys)
    assert not (tmp_path / "o").exists()


def test_cli_batch_with_the_default_shapes_clip_reward(tmp_path):
    out = tmp_path / "out"
    assert main(["batch", str(_prompts_file(tmp_path, PROMPTS[:2])), "--n", "2", "-o", str(out), *SIZE]) == 0
    records = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(set(r["scores"]) == {unbottle.rewards.DEFAULT} for r in records)
    reward = unbottle.load_reward(unbottle.rewards.DEFAULT)
    for r in records:
        assert r["combined"] == pytest.approx(r["units"][unbottle.rewards.DEFAULT], abs=1e-6)
        pixels = torch.from_numpy(_pixels(out / r["image"])).permute(2, 0, 1)[None].float() / 255.0
        with torch.no_grad():
            assert float(reward(pixels, [r["prompt"]])[0]) == pytest.approx(r["scores"][unbottle.rewards.DEFAULT],
                                                                            abs=1e-4)  # fmt: skip


# ---- one run per folder -------------------------------------------------------------------------------------------


@contextmanager
def _held_by_another_thread(out):
    """Hold `out` as another run would: `lock_output` from another thread (its own handle on the lock file)."""
    held, release = threading.Event(), threading.Event()

    def hold():
        with rb.lock_output(out):
            held.set()
            release.wait(120)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert held.wait(30)
    try:
        yield
    finally:
        release.set()
        thread.join(30)


def test_no_wait_refuses_a_held_folder_naming_it_and_the_pid(pipe, tmp_path, fake_rewards, capsys):
    out = tmp_path / "out"
    config = rb.BatchConfig(n=1, rewards={"red": 1.0}, batch_size=1)
    kwargs = dict(rewards=_fakes("red"), call_kwargs=CALL, progress=False)
    args = ["batch", str(_prompts_file(tmp_path, PROMPTS[:1])), "--n", "1", "--rewards", "red", "-o", str(out), *SIZE]
    with _held_by_another_thread(out):
        assert (out / rb.LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(rb.OutputLockedError) as e:
            rb.run_batch(pipe, PROMPTS[:1], out, config, wait=False, **kwargs)
        assert e.value.pid == os.getpid() and e.value.out_dir == out
        assert str(out) in str(e.value) and f"pid {os.getpid()}" in str(e.value)
        assert main([*args, "--no-wait"]) == 1
        err = _error(capsys)
        assert "-o/--output" in err and str(out) in err and f"pid {os.getpid()}" in err, err
        assert not rb.shard_paths(out) and not list(out.glob("images/*"))
    result = rb.run_batch(pipe, PROMPTS[:1], out, config, wait=False, **kwargs)  # released: runs
    assert result.generated == 1 and (out / rb.LOCK_FILE).exists()
    with rb.lock_output(out, wait=False), rb.lock_output(out, wait=False):  # re-entrant within a thread
        pass


def test_two_runs_started_together_on_one_folder_make_each_candidate_once(tmp_path):
    prompts, out = _prompts_file(tmp_path), tmp_path / "out"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, str(driver), "batch", str(prompts), "--n", "2", "--rewards", "blue", "--batch-size",
               "2", "-o", str(out), *SIZE]  # fmt: skip
    waiting = f"waiting for another unbottle batch run on {out} (pid {os.getpid()}) to finish"
    runs, readers, outputs = [], [], [[], []]
    with _held_by_another_thread(out):  # both start against a held folder, so both wait, then race for it
        for k in range(2):
            runs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True, start_new_session=True))  # fmt: skip
            readers.append(threading.Thread(target=lambda k=k: outputs[k].extend(runs[k].stdout), daemon=True))
            readers[-1].start()
        deadline = time.monotonic() + 120
        try:
            while not all(waiting in "".join(o) for o in outputs):
                assert all(r.poll() is None for r in runs), outputs
                assert time.monotonic() < deadline, outputs
                time.sleep(0.05)
        except BaseException:
            for r in runs:
                _kill_tree(r)
            raise
    try:
        codes = [r.wait(timeout=120) for r in runs]
    finally:
        for r in runs:
            _kill_tree(r)
    for reader in readers:
        reader.join(30)
    texts = ["".join(o) for o in outputs]
    assert codes == [0, 0], texts
    assert [t.count("waiting for another unbottle batch run") for t in texts] == [1, 1]  # said once each
    assert sorted(re.search(r"\((\d+) from before\)", t).group(1) for t in texts) == ["0", "6"], texts
    pairs = [(i, j) for i in range(3) for j in range(2)]
    assert sorted((r["prompt_index"], r["candidate"]) for r in _shard_lines(out)) == pairs  # each once
    merged = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [(r["prompt_index"], r["candidate"]) for r in merged] == pairs
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(Path(rb.image_name(i, j)).name
                                                                        for i, j in pairs)  # fmt: skip
    assert all(_pixels(out / r["image"]).shape == (32, 32, 3) for r in merged)


# ---- SIGKILL, resume, several processes ---------------------------------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_tree(proc):
    """SIGKILL a launcher we started and its workers (torchrun starts them in their own sessions)."""
    import psutil

    if proc.poll() is not None:
        return
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.kill()  # psutil checks that the pid still is this process
        except psutil.NoSuchProcess:
            pass
    proc.kill()
    proc.wait(timeout=60)
    psutil.wait_procs(family, timeout=60)


def _two_processes(tmp_path, args):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), str(driver)]  # fmt: skip
    # accelerate 1.x starts several local CPU processes only through --multi_gpu (torchrun); `--cpu` starts one.
    # The verb makes its PartialState with cpu=True, so the two processes talk over gloo.
    return subprocess.Popen([*launch, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip


def test_sigkill_of_two_processes_then_resume_in_one_matches_a_clean_run(tmp_path, fake_rewards):
    prompts = _prompts_file(tmp_path, [*PROMPTS, "a small purple circle", "a striped orange square"])
    common = [str(prompts), "--n", "3", "--rewards", "red,green:0.5", "--batch-size", "1", "--seed", "11", *SIZE]
    out, clean = tmp_path / "out", tmp_path / "clean"
    total = 5 * 3

    proc = _two_processes(tmp_path, ["batch", *common, "-o", str(out)])
    deadline = time.monotonic() + 240
    try:
        while True:  # kill once both processes have written and the batch is not finished
            counts = [len(p.read_bytes().split(b"\n")) - 1 for p in rb.shard_paths(out)]
            if len(counts) == 2 and min(counts) >= 1 and sum(counts) >= 3:
                break
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the 2-process batch wrote nothing"
            time.sleep(0.02)
    finally:
        _kill_tree(proc)
    before = _shard_lines(out)
    assert 3 <= len(before) < total and {r["process"] for r in before} == {0, 1}
    assert not (out / "index.html").exists()

    # resume with one process; --no-wait: the killed launch left nothing that holds the folder
    assert main(["batch", *common, "-o", str(out), "--no-wait"]) == 0
    assert main(["batch", *common, "-o", str(clean)]) == 0  # the same batch, never interrupted
    records = _shard_lines(out)
    pairs = [(r["prompt_index"], r["candidate"]) for r in records]
    assert len(records) == total  # none lost ...
    assert sorted(pairs) == [(i, j) for i in range(5) for j in range(3)]  # ... and none twice
    merged = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (clean / "scores.jsonl").read_text().splitlines()]
    assert len(merged) == len(expected) == total
    for r, e in zip(merged, expected, strict=True):
        np.testing.assert_array_equal(_pixels(out / r["image"]), _pixels(clean / e["image"]))
        assert r["scores"] == pytest.approx(e["scores"], abs=1e-6) and r["rank"] == e["rank"]
    assert (
        json.loads((out / "ranking.json").read_text())["prompts"]
        == json.loads((clean / "ranking.json").read_text())["prompts"]
    )


def test_two_processes_make_the_same_batch_as_one(tmp_path, fake_rewards):
    prompts = _prompts_file(tmp_path)
    common = [str(prompts), "--n", "2", "--rewards", "blue", "--batch-size", "2", *SIZE]
    proc = _two_processes(tmp_path, ["batch", *common, "-o", str(tmp_path / "two")])
    try:
        output, _ = proc.communicate(timeout=240)
    finally:
        _kill_tree(proc)
    assert proc.returncode == 0, output
    assert main(["batch", *common, "-o", str(tmp_path / "one")]) == 0
    shards = rb.shard_paths(tmp_path / "two")
    assert [p.name for p in shards] == ["scores.rank0.jsonl", "scores.rank1.jsonl"]
    assert all(p.read_text().strip() for p in shards)  # both processes made candidates
    two = [json.loads(line) for line in (tmp_path / "two" / "scores.jsonl").read_text().splitlines()]
    one = [json.loads(line) for line in (tmp_path / "one" / "scores.jsonl").read_text().splitlines()]
    strip = ("process",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in two] == [
        {k: v for k, v in r.items() if k not in strip} for r in one
    ]
    for r in two:
        np.testing.assert_array_equal(_pixels(tmp_path / "two" / r["image"]), _pixels(tmp_path / "one" / r["image"]))
