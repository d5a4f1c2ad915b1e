"""`unbottle batch PROMPTS.txt`: N reward-scored candidates per prompt, resumable, split over `accelerate launch`.

    unbottle batch prompts.txt --n 4 --rewards shapes-clip -o out         # the embedded default, CPU, seconds
    accelerate launch --num_processes 8 -m unbottle batch prompts.txt --model ID -o out      # one GPU each
    accelerate launch --multi_gpu --num_processes 2 -m unbottle batch prompts.txt -o out     # 2 CPU processes

Run the same command again to resume; a second run on the same -o folder waits for the first to finish, then resumes
(with `--no-wait` it refuses instead, exit 1, naming the folder and the running pid). Candidate j of every prompt
uses seed `--seed + j`; with `--batch-size 1` it is exactly `unbottle image PROMPT --seed S` with the same model and
settings (see `unbottle.batch` for the files written, what a resume trusts, and the numerics of
larger batches). On CPUs, accelerate 1.x starts several local processes only with `--multi_gpu` (its `--cpu`
launcher starts one); the verb then talks gloo between them.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import ExitStack
from pathlib import Path

from ..errors import RunError, UsageError

# fields of the batch config and of run.json → the option that sets them (for error messages)
OPTIONS = {
    "n": "--n", "seed": "--seed", "batch_size": "--batch-size", "rewards": "--rewards",
    "prompts_sha256": "PROMPTS.txt", "num_prompts": "PROMPTS.txt", "model": "--model", "dtype": "--dtype",
    "call.num_inference_steps": "--steps", "call.height": "--height", "call.width": "--width",
    "call.guidance_scale": "--guidance-scale", "call.negative_prompt": "--negative-prompt",
}  # fmt: skip


def add_arguments(sub: argparse.ArgumentParser) -> None:
    """The batch verb's options beyond DESIGN's, consistent with `unbottle image`'s."""
    from .options import positive_int, run_options, seed

    sub.add_argument("--model", metavar="ID|PATH", help="hub id or local pipeline folder (default: embedded model)")
    sub.add_argument("--seed", type=seed, default=0, help="seed of candidate 0; candidate j uses seed + j (default 0)")
    sub.add_argument("--steps", type=positive_int("--steps"), help="denoising steps (default: the model's)")
    sub.add_argument("--height", type=positive_int("--height"), help="pixels (default: the model's)")
    sub.add_argument("--width", type=positive_int("--width"), help="pixels (default: the model's)")
    sub.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale (default: the model's)")
    sub.add_argument("--negative-prompt", help="negative prompt, for models that take one")
    sub.add_argument("--batch-size", type=positive_int("--batch-size"), default=4,
                     help="images per pipeline call (default 4; 1 = `unbottle image` bit for bit)")  # fmt: skip
    sub.add_argument("--no-wait", action="store_true",
                     help="refuse, instead of waiting, while another batch run writes the -o folder")  # fmt: skip
    run_options(sub)


def _option(key: str) -> str:
    return OPTIONS.get(key) or OPTIONS.get(key.split(".")[0]) or key


def _rewards(text: str | None) -> dict[str, float]:
    from .. import rewards

    if text is None:
        return {rewards.DEFAULT: 1.0}
    try:
        return dict(rewards.parse_rewards(text))
    except ValueError as e:
        raise UsageError(f"--rewards: {e}") from e


def _prompts(path: str) -> list[str]:
    from ..batch import read_prompts

    try:
        return read_prompts(path)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"PROMPTS.txt: {e}") from e
    except OSError as e:
        raise RunError(f"PROMPTS.txt: cannot read {path!r}: {e.strerror or e}") from e


def _output_dir(path: str) -> Path:
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o/--output: {str(out)!r} is a file; give a folder (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".unbottle-write-probe.{os.getpid()}"  # one per process: runs may start together
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RunError(f"-o/--output: cannot write to the folder {str(out)!r}: {e.strerror or e}") from e
    images = out / "images"
    if images.exists() and not images.resolve().is_relative_to(out.resolve()):
        raise UsageError(f"-o/--output: {str(images)!r} links outside the output folder; remove the link")
    return out


def _mismatch(error: Exception, out: Path) -> UsageError:
    shown = "; ".join(f"{_option(key)}: {old!r} there, {new!r} here" for key, old, new in error.differences)
    return UsageError(
        f"-o/--output: {str(out)!r} holds a batch made with other arguments ({shown}); run with the same prompts "
        "and arguments to resume it, or pass a new -o folder"
    )


def run_from_cli(args: argparse.Namespace) -> int:
    """Run `unbottle batch` from parsed arguments; returns the exit code."""
    from .. import batch as rb
    from ..defaults import EMBEDDED
    from .generate import call_parameters, check_size, is_video_pipeline
    from .loading import load_pipeline
    from .options import device_and_dtype

    weights = _rewards(args.rewards)
    prompts = _prompts(args.prompts)
    try:
        config = rb.BatchConfig(n=args.n, rewards=weights, seed=args.seed, batch_size=args.batch_size)
    except rb.BatchConfigError as e:
        raise UsageError(f"{_option(e.field)}: {e}") from e
    device, dtype = device_and_dtype(args)
    default = EMBEDDED["image"] if args.model is None else None
    steps = args.steps if args.steps is not None else (default.steps if default else None)
    height = args.height if args.height is not None else (default.height if default else None)
    width = args.width if args.width is not None else (default.width if default else None)
    guidance = args.guidance_scale if args.guidance_scale is not None else getattr(default, "guidance_scale", None)
    call = {"num_inference_steps": steps, "height": height, "width": width, "guidance_scale": guidance,
            "negative_prompt": args.negative_prompt}  # fmt: skip
    call = {k: v for k, v in call.items() if v is not None}
    model = "embedded:image" if args.model is None else args.model
    if args.model is not None and Path(args.model).expanduser().is_dir():
        model = str(Path(args.model).expanduser().resolve())  # one spelling of a local folder, for resuming
    identity = rb.run_identity(prompts, config, call, model, {"dtype": str(dtype).removeprefix("torch.")})
    out = Path(args.output).expanduser()
    try:
        rb.check_resume(out, identity)  # before the model loads: a wrong resume fails fast
    except rb.ResumeMismatchError as e:
        raise _mismatch(e, out) from e
    state = rb.make_state(device)
    main = state.is_main_process
    if main:
        out = _output_dir(args.output)
    if state.num_processes > 1:
        device = state.device
    say = (lambda text: print(text, file=sys.stderr)) if main else (lambda text: None)
    hold = ExitStack()
    try:  # before the model loads: a second run waits here (or refuses) without taking memory
        hold.enter_context(rb.lock_output(out, state, wait=not args.no_wait, log=say))
    except (rb.OutputLockedError, OSError) as e:
        raise RunError(f"-o/--output: {e}") from e
    with hold:
        where = default.description if default else args.model
        procs = f", {state.num_processes} processes" if state.num_processes > 1 else ""
        say(f"unbottle batch: loading {where} on {device} ({str(dtype).removeprefix('torch.')}){procs}")
        pipe = load_pipeline(args.model, "image", device=device, dtype=dtype,
                             trust_remote_code=args.trust_remote_code)  # fmt: skip
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)  # one bar over the candidates instead
        if "prompt" not in call_parameters(pipe) or "num_inference_steps" not in call_parameters(pipe):
            raise UsageError(f"--model: {type(pipe).__name__} is not a text-to-image or text-to-video pipeline")
        check_size(pipe, height, width, 1 if is_video_pipeline(pipe) else None)
        if args.negative_prompt is not None and "negative_prompt" not in call_parameters(pipe):
            raise UsageError(f"--negative-prompt: {type(pipe).__name__} takes no negative prompt")
        rewards = _load_rewards(config, device)
        say(f"{len(prompts)} prompts × {config.n} candidates, rewards "
            + ", ".join(f"{name} × {w:g}" for name, w in config.rewards))  # fmt: skip
        try:
            result = rb.run_batch(pipe, prompts, out, config, rewards=rewards, call_kwargs=call, state=state,
                                  model=model, extra_identity={"dtype": str(dtype).removeprefix("torch.")},
                                  progress=not args.quiet, log=say, wait=not args.no_wait)  # fmt: skip
        except rb.ResumeMismatchError as e:  # a run that held the folder before this one started it otherwise
            raise _mismatch(e, out) from e
    say(f"wrote {out / rb.INDEX_FILE} and {out / rb.RANKING_FILE}: {len(result.records)} candidates "
        f"({result.resumed} from before)")  # fmt: skip
    return 0


def _load_rewards(config: object, device: object) -> dict:
    from ..rewards import load_reward

    rewards = {}
    for name, _ in config.rewards:
        try:
            rewards[name] = load_reward(name, device=device)
        except (ValueError, KeyError) as e:
            raise UsageError(f"--rewards: {e}") from e
        except (FileNotFoundError, ImportError, OSError) as e:
            raise RunError(f"--rewards: cannot load {name!r}: {str(e).strip().splitlines()[0]}") from e
    return rewards
