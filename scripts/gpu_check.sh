#!/usr/bin/env bash
# The GPU check at real scale, in one call on a lent CUDA machine (run from the repository root, carrying
# .whl as scripts/gpu_device_run.sh describes):
#   bash scripts/gpu_check.sh
# It is scripts/gpu_device_run.sh with FULLSIZE=1:
#   install, env, imports - the carried dependencies, versions, the modules the check uses;
#   pytest   - tests/inference/test_engine_gpu.py -m gpu (torch resampling bit-equal to scipy on CUDA; CUDA
#              vs CPU segmentation);
#   weights  - scripts/make_fullsize_models.py builds the full-size total_mr networks on the machine ($WEIGHTS);
#   fullsize - tests/bench/bench_inference.py --fullsize: SegNode's warm engine on CUDA vs the official
#              TotalSegmentator -d gpu on the same weights, default and --fast, per series wall time, peak VRAM,
#              peak RSS and per-label Dice (>= 0.999 expected);
#   queue    - 20 queued series through one warm engine: series/hour, device busy time, peak VRAM.
# Budget: about 8 min (weights 1-2 min, pytest 1 min, official -d gpu about 40 s per series and mode).
# Knobs: SKIP_INSTALL=1 (dependencies already installed), WEIGHTS=DIR (reuse built weights: the weights step
# rewrites them), FULLSIZE_ARGS="--series DIR ..." / "--modes default", QUEUE=N, *_TIMEOUT (seconds per step).
# Output: stdout and $OUT/gpu_log.txt; paste the tables into the closing note.
export FULLSIZE=1
exec bash "$(dirname "$0")/gpu_device_run.sh" "$@"
