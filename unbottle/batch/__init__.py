"""Reward-scored batch generation: N candidates per prompt, scored by rewards, ranked; resumable and multi-process.

    from unbottle.batch import BatchConfig, read_prompts, run_batch
    result = run_batch(pipe, read_prompts("prompts.txt"), "out", BatchConfig(n=4, rewards={"shapes-clip": 1.0}))
    result.ranking[0]["best"]          # the best candidate of the first prompt: seed, scores, image path

What it writes, as it goes (`out_dir`):
- `images/p{i:05d}_c{j:02d}.png`: candidate j of prompt i (written to a temporary file, then `os.replace`d). Video
  pipelines make 1-frame videos and the frame is the image, as `unbottle image` does.
- `scores.rank{r}.jsonl`: one line per finished candidate of process r, appended, flushed and `os.fsync`ed after its
  image is in place: prompt index and text, candidate, seed, each reward's raw and unit score, the combined score,
  the image path (relative to `out_dir`). One process writes one shard, so no two processes append to one file.
- `run.json`: what identifies the run (the prompts' hash, n, rewards, seed, batch size, model, call arguments).
At the end, on the main process: `scores.jsonl`, `ranking.json` and `index.html` (report.py).

Seeds: candidate j of every prompt uses `seed + j` (a CPU `torch.Generator`, like `unbottle image`); how batching
keeps a candidate's image independent of its batch is in runner.py. Combined score: `sum(weight * reward.unit(raw))`
over the rewards (config.py). Resuming: run again with the same arguments; what a resume keeps and what it trusts is
in store.py, the arguments it must match in identity.py, one run per folder in lock.py.

Modules: config (what a batch makes), identity (run.json and resume checks), store (images, shards, record
validation, compaction), lock (the folder lock), runner (generation, scoring, `run_batch`), report (ranking, JSON,
HTML).
"""

from __future__ import annotations

from .config import BatchConfig, BatchConfigError, BatchResult, read_prompts
from .identity import ResumeMismatchError, check_resume, prompts_hash, run_identity
from .lock import LOCK_FILE as LOCK_FILE  # the names of the files a run writes: importable here too
from .lock import OutputLockedError, lock_output
from .report import rank_records, render_index, write_reports
from .runner import make_state, run_batch
from .store import INDEX_FILE as INDEX_FILE
from .store import RANKING_FILE as RANKING_FILE
from .store import RUN_FILE as RUN_FILE
from .store import SCORES_FILE as SCORES_FILE
from .store import compact_shards, image_name, load_records, shard_paths

__all__ = [
    "BatchConfig",
    "BatchConfigError",
    "BatchResult",
    "OutputLockedError",
    "ResumeMismatchError",
    "check_resume",
    "compact_shards",
    "image_name",
    "load_records",
    "lock_output",
    "make_state",
    "prompts_hash",
    "rank_records",
    "read_prompts",
    "render_index",
    "run_batch",
    "run_identity",
    "shard_paths",
    "write_reports",
]
