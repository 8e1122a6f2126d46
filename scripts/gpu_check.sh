#!/usr/bin/env bash
# GPU checks of the inference engine, for a machine with a CUDA device. Run from the repository root:
#   bash scripts/gpu_check.sh [--real-weights DIR]
# 1. the gpu-marked tests (torch resampling bit-equal to scipy on CUDA; CUDA vs CPU segmentation);
# 2. the benchmark on CUDA: SegNode's warm engine vs the official TotalSegmentator command (-d gpu), default and
#    --fast, with the tiny test models (and with real weights when --real-weights DIR is given).
# Output goes to stdout; paste it into the issue's closing note.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
segnode --help >/dev/null 2>&1 || pip install -e . --no-deps -q
python -m pytest tests/inference/test_engine_gpu.py -m gpu -q -p no:cacheprovider -rs
for mode in "" "--fast"; do
  python tests/bench/bench_inference.py --device cuda --official-device gpu --runs 5 --official-runs 2 $mode
done
if [[ "${1:-}" == "--real-weights" && -n "${2:-}" ]]; then
  python tests/bench/bench_inference.py --device cuda --official-device gpu --runs 3 --official-runs 1 \
    --weights "$2"
fi
