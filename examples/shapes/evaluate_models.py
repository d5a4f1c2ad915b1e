"""Score the shipped shapes models (the numbers in their model cards), on CPU or GPU.

    python examples/shapes/evaluate_models.py -o runs/eval.json                   # all three, ~5 min on 2 CPU cores
    python examples/shapes/evaluate_models.py --only t2i --images 200 --videos 0

T2I/T2V: the shapes evaluator on held-out captions (seed 10_000 images, 10_001 videos; 20 steps, guidance 4, 128 px).
DLM: exact-match retrieval through diffusers' stock `LLaDA2Pipeline` (greedy, one token per step) on held-out
documents (seed 10_000) of the trained length, at the CLI's settings (4 generated tokens: the answer, then
end-of-text) and with the generation exactly as long as the answer. CLIP: held-out image→text top-1 among 256
captions and binding accuracy (true caption above its colour swap), as in `train_clip.py`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from unbottle.shapes import retrieval  # noqa: E402
from unbottle.shapes.pretrained import call_defaults, load_pipeline  # noqa: E402


def eval_t2v(images: int, videos: int, device: torch.device, out: Path | None) -> dict:
    from train_t2v import quick_eval

    pipe = load_pipeline("t2i", device=device)
    pipe.set_progress_bar_config(disable=True)
    return quick_eval(pipe, device, images, print, out, videos)


def eval_dlm(documents: int, length: int, device: torch.device) -> dict:
    pipe = load_pipeline("dlm", device=device)
    pipe.set_progress_bar_config(disable=True)
    defaults = call_defaults("dlm")
    correct = {"cli": 0, "answer": 0}
    for setting in correct:
        rng = random.Random(10_000)
        for _ in range(documents):
            if setting == "cli":  # `unbottle text PROMPT`: the prompt leaves room for the default generation
                prompt, answer = retrieval.make_example(rng, length, defaults["gen_length"])
                kwargs = dict(defaults)
            else:
                prompt, answer = retrieval.make_example(rng, length)
                n = len(answer.split())
                kwargs = {**defaults, "gen_length": n, "block_length": n, "num_inference_steps": n}
            correct[setting] += retrieval.score(pipe(prompt=prompt, **kwargs).texts[0], answer)
    result = {"accuracy": correct["cli"] / documents, "accuracy_answer_length": correct["answer"] / documents,
              "gen_length": defaults["gen_length"], "documents": documents, "length": length}  # fmt: skip
    print(f"dlm: {json.dumps(result)}")
    return result


def eval_clip(n: int, device: torch.device) -> dict:
    from train_clip import evaluate, held_out

    from unbottle.shapes.clip import load_shapes_clip

    model, _, _ = load_shapes_clip(device=device)
    result = evaluate(model, held_out(n), device)
    print(f"clip: {json.dumps(result)}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, help="write the results here as JSON (and sample sheets beside it)")
    parser.add_argument("--only", choices=("t2i", "dlm", "clip"), action="append", help="score only these")
    parser.add_argument("--images", type=int, default=200, help="held-out image captions")
    parser.add_argument("--videos", type=int, default=32, help="held-out motion captions")
    parser.add_argument("--documents", type=int, default=64, help="held-out retrieval documents")
    parser.add_argument("--length", type=int, default=1024, help="retrieval document length (the trained one)")
    parser.add_argument("--clip-captions", type=int, default=256)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    only = set(args.only or ("t2i", "dlm", "clip"))
    results: dict = {"device": str(device), "torch": torch.__version__}
    start = time.time()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    if "t2i" in only:
        results["t2v"] = eval_t2v(args.images, args.videos, device, args.out.parent if args.out else None)
    if "dlm" in only:
        results["dlm"] = eval_dlm(args.documents, args.length, device)
    if "clip" in only:
        results["clip"] = eval_clip(args.clip_captions, device)
    results["seconds"] = round(time.time() - start, 1)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
