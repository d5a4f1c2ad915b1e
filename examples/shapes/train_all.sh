#!/usr/bin/env bash
# Re-create the shapes models on one GPU at once (each alone leaves an H200 more than half idle).
#
#   bash examples/shapes/train_all.sh runs/shapes                 # ~20 min on one H200; logs in runs/shapes/*.out
#   MODELS="t2v clip" bash examples/shapes/train_all.sh runs/shapes   # a subset
#
# The shipped t2v v1 trained alone (`python examples/shapes/train_t2v.py --out runs/t2v`, 18.4 min); sharing the GPU
# with the others costs it steps.
#
# Outputs: t2v/pipeline (WanPipeline, fp16), clip/shapes_clip.safetensors, dlm/dlm (fp16), each with its log and
# training record.
set -euo pipefail
out=${1:-runs/shapes}
models=${MODELS:-t2v clip dlm}
py=${PYTHON:-python3}
mkdir -p "$out"
for m in $models; do
  case $m in
    t2v) "$py" examples/shapes/train_t2v.py --out "$out/t2v" --workers 5 --bank-workers 6 > "$out/t2v.out" 2>&1 & ;;
    clip) "$py" examples/shapes/train_clip.py --out "$out/clip" --minutes 5 --workers 4 > "$out/clip.out" 2>&1 & ;;
    dlm) "$py" examples/shapes/train_dlm.py --out "$out/dlm" --minutes 9 --workers 2 > "$out/dlm.out" 2>&1 & ;;
    *) echo "unknown model $m (t2v, clip, dlm)" >&2; exit 2 ;;
  esac
done
wait
