"""Test-wide settings: no hub access, few CPU threads, deterministic kernels."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)  # tiny models: thread start-up costs more than it saves on 2 cores
