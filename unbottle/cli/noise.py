"""`--rewards NAME[:W],...`, `--explore N`, `--optimize ITERS`: a NoiseSearch generating in the pipeline's place.

`--explore N` is the best of seeds `--seed` … `--seed + N − 1` (CARINOX exploration), `--optimize K` runs K
iterations of reward-guided noise optimization per seed (CARINOX / ReNO), `--rewards` picks the rewards and weights
(default `unbottle.rewards.DEFAULT`, the offline shapes CLIP). `--rewards` alone scores the one image made. The
chosen seed and its scores are printed to stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import RunError, UsageError

NOISE_FLAGS = ("rewards", "explore", "optimize")
# NoiseSearchConfig fields → the option that sets them, for error messages
OPTIONS = {"seeds": "--seed/--explore", "iterations": "--optimize"}


def wants_search(args: argparse.Namespace) -> bool:
    """True when any of --rewards/--explore/--optimize (CARINOX noise search) was given."""
    return any(getattr(args, flag, None) is not None for flag in NOISE_FLAGS)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def parse_reward_weights(text: str | None) -> dict[str, float]:
    """{name: λ} from --rewards (CARINOX reward weights; default {DEFAULT: 1}); errors name --rewards."""
    from .. import rewards

    if text is None:
        return {rewards.DEFAULT: 1.0}
    try:
        weights = rewards.parse_rewards(text)
    except ValueError as e:
        raise UsageError(f"--rewards: {e}") from e
    if not weights:
        raise UsageError(f"--rewards: {text!r} names no reward")
    return dict(weights)


def check_noise_args(args: argparse.Namespace) -> None:
    """Validate the noise-search options before any model loads (CARINOX exploration / optimization)."""
    if not wants_search(args):
        return
    given = [f"--{flag}" for flag in NOISE_FLAGS if getattr(args, flag, None) is not None]
    for option, dest in (("--bottleneck", "bottleneck"), ("--bottleneck-stages", "bottleneck_stages")):
        if getattr(args, dest, None) is not None:
            raise UsageError(f"{' and '.join(given)} and {option}: noise search runs the stock pipeline; give one")
    if args.verb == "video" and args.optimize is not None:
        raise UsageError(
            "--optimize: reward-guided noise optimization backpropagates through every frame and step, which "
            "`unbottle video` does not offer; use --explore N (best of N seeds) for videos, or `unbottle image`"
        )
    parse_reward_weights(args.rewards)


def _load(weights: dict[str, float], device: Any) -> dict[str, tuple[Any, float]]:
    from .. import rewards

    loaded = {}
    for name, weight in weights.items():
        try:
            loaded[name] = (rewards.load_reward(name, device=device), weight)
        except ValueError as e:
            raise UsageError(f"--rewards: {e}") from e
        except (OSError, ImportError, RuntimeError) as e:
            raise RunError(f"--rewards: cannot load the reward {name!r}: {_first_line(e)}") from e
    return loaded


class SearchRunner:
    """Generates in the pipeline's place with its call signature: the NoiseSearch's chosen output (CARINOX)."""

    def __init__(self, search: Any) -> None:
        self.search = search

    def __call__(self, prompt: str, generator: Any = None, **kwargs: Any) -> Any:
        """Run the search (the seeds come from --seed, not `generator`); report the choice; the stock output."""
        result = self.search(prompt, **kwargs)
        cfg = self.search.config
        seeds = cfg.seeds
        which = f"seed {result.seed}" + (f" (best of seeds {seeds[0]}–{seeds[-1]})" if len(seeds) > 1 else "")
        if cfg.iterations:
            which += f", {cfg.iterations} iterations (best at iteration {result.iteration})"
        scores = ", ".join(f"{n} {result.scores[n]:.4f} (unit {result.units[n]:.4f})" for n in result.scores)
        print(f"noise search: {which}; {scores}", file=sys.stderr)
        return result.output


def make_search_runner(pipe: Any, args: argparse.Namespace, runner: Any = None) -> Any:
    """A SearchRunner for --rewards/--explore/--optimize (checked by `check_noise_args`), else `runner` unchanged."""
    if not wants_search(args):
        return runner
    from ..pipelines.noise_search import NoiseSearch, NoiseSearchConfigError

    rewards = _load(parse_reward_weights(args.rewards), getattr(pipe, "_execution_device", None))
    seeds = list(range(args.seed, args.seed + (args.explore or 1)))
    try:
        search = NoiseSearch(pipe, rewards, seeds=seeds, iterations=args.optimize or 0, progress=not args.quiet)
    except NoiseSearchConfigError as e:
        raise UsageError(f"{OPTIONS.get(e.field, '--optimize')}: {e}") from e
    except ValueError as e:  # a pipeline whose noise cannot be optimized
        raise UsageError(f"--optimize: {e}") from e
    weights = ", ".join(f"{name} × {weight:g}" for name, (_, weight) in rewards.items())
    n, k = len(seeds), args.optimize or 0
    plan = f"{n} seed{'s' * (n != 1)} × {k} iteration{'s' * (k != 1)}"
    print(f"noise search: {plan}, rewards {weights}", file=sys.stderr)
    return SearchRunner(search)
