#!/usr/bin/env bash
# One-call GPU check on a lent CUDA machine that has Python 3.12 + torch (CUDA build), numpy, scipy, pandas,
# scikit-image, scikit-learn, matplotlib, seaborn, requests, pytest, pytest-timeout and hypothesis, but none
# of SegNode's other dependencies, and no network. Run from the repository root with the dependencies
# carried in .whl/ (git-ignored; see "Carried dependencies" below):
#   bash scripts/gpu_device_run.sh
# Steps (each one runs even when an earlier one failed; a failed step prints "=== FAILED <step>"):
#   install  - the carried dependencies into $SEGNODE_SITE (default /tmp/site), put first on PYTHONPATH;
#   env      - nvidia-smi, torch/CUDA versions, versions of the carried packages;
#   imports  - the modules the check uses (engine, nnU-Net predictor, official TotalSegmentator command);
#   pytest   - tests/inference/test_engine_gpu.py -m gpu (fails when the tests are skipped: no CUDA device);
#   bench    - tests/bench/bench_inference.py on CUDA vs the official command with -d gpu, default and --fast.
# With FULLSIZE=1 (scripts/gpu_check.sh sets it) the tiny-model bench is replaced by the check at real scale:
#   weights  - scripts/make_fullsize_models.py writes the full-size networks to $WEIGHTS (default
#              /tmp/fullsize-weights; too big to carry, built here: about 1-2 min);
#   fullsize - bench_inference.py --fullsize on CUDA vs the official -d gpu on the same weights, default and
#              --fast, per series: wall time, peak VRAM, peak RSS, per-label Dice (FULLSIZE_ARGS: extra args);
#   queue    - 20 series (QUEUE) through one warm engine, default and --fast: series/hour, device busy time
#              and peak VRAM.
# Everything is also written to $OUT/gpu_log.txt ($OUT defaults to /tmp/segnode_gpu_out).
# Knobs (environment): SKIP_INSTALL=1 (reuse $SEGNODE_SITE, e.g. on a warm machine), BENCH_RUNS (3),
# OFFICIAL_RUNS (1), PYTEST_TIMEOUT (140 s), BENCH_TIMEOUT (200 s each), BENCH_ARGS (extra bench arguments,
# e.g. "--series DIR ..."); worst case about 10 min, typically about 4
# (2026-11-28, H200: official default run 43 s and --fast 37 s each, CUDA start included).
#
# Carried dependencies: either wheels (.whl/*.whl, installed with pip --no-index --no-deps --target) or,
# where the wheels are too large for the transfer limit (SimpleITK alone is a 53 MB wheel),
# .whl/site.tar.xz: the same wheels installed here by a Python 3.12 pip with --no-deps --target, packed
# with xz. Recipe (the versions the project is tested with; numpy, scipy, torch etc. stay the machine's):
#   W=/tmp/wheels; P="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $P \
#     -d $W nnunetv2==2.8.1 dynamic_network_architectures==0.4.4 batchgenerators==0.25.5 \
#     batchgeneratorsv2==0.3.6 blosc2==4.14.1 ndindex==1.10.1 numexpr==2.14.2 \
#     connected-components-3d==4.1.1 SimpleITK==2.5.7 nibabel==5.4.2 pydicom==3.0.2 pynetdicom==3.0.4 \
#     pydantic==2.13.4 pydantic_core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 \
#     dicom2nifti==2.6.2 TotalSegmentator==2.18.0
#   python3 -m pip wheel --no-deps -w $W acvl_utils==0.2.6          # published as an sdist only
#   python3.12 -m pip install --no-index --no-deps --no-compile --target /tmp/site312 $W/*.whl
#   tar -C /tmp/site312 --exclude=./bin -cf - . | xz -9 -T2 > .whl/site.tar.xz   # about 44 MB
#   python3 -m pip download --no-deps -d .whl typing_extensions==4.16.0  # pydantic needs >= 4.14.1
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

OUT="${OUT:-/tmp/segnode_gpu_out}"
SITE="${SEGNODE_SITE:-/tmp/site}"
BENCH_RUNS="${BENCH_RUNS:-3}"
OFFICIAL_RUNS="${OFFICIAL_RUNS:-1}"
PYTEST_TIMEOUT="${PYTEST_TIMEOUT:-140}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-200}"
WEIGHTS="${WEIGHTS:-/tmp/fullsize-weights}"
WEIGHTS_TIMEOUT="${WEIGHTS_TIMEOUT:-180}"
FULLSIZE_TIMEOUT="${FULLSIZE_TIMEOUT:-240}"
QUEUE="${QUEUE:-20}"
mkdir -p "$OUT"

FAILED=()

step() {
  local name="$1"
  shift
  local start=$SECONDS
  echo
  echo "=== STEP $name ($(date -u +%H:%M:%S))"
  "$@"
  local rc=$?
  if [[ $rc -eq 0 ]]; then
    echo "=== OK $name ($((SECONDS - start)) s)"
  else
    echo "=== FAILED $name (exit $rc after $((SECONDS - start)) s)"
    FAILED+=("$name")
  fi
  return 0
}

install_deps() {
  mkdir -p "$SITE" || return 1
  local did=0
  if [[ -f .whl/site.tar.xz ]]; then
    python3 - "$SITE" <<'PY' || return 1
import sys
import tarfile

with tarfile.open(".whl/site.tar.xz") as archive:
    archive.extractall(sys.argv[1], filter="data")
print("unpacked .whl/site.tar.xz into", sys.argv[1])
PY
    did=1
  fi
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      .whl/*.whl || return 1
    echo "installed $(ls .whl/*.whl | wc -l) wheels into $SITE"
    did=1
  fi
  [[ $did -eq 1 ]] || { echo "no .whl/site.tar.xz and no .whl/*.whl: carry .whl"; return 1; }
}

show_env() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 - <<'PY'
import importlib.metadata as md
import sys

import torch

print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0))
names = [
    "numpy", "scipy", "typing_extensions", "nnunetv2", "dynamic_network_architectures", "acvl_utils",
    "batchgenerators", "batchgeneratorsv2", "blosc2", "connected-components-3d", "SimpleITK", "nibabel",
    "pydicom", "pynetdicom", "pydantic", "pydantic_core", "dicom2nifti", "TotalSegmentator",
]
for name in names:
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name} MISSING")
PY
}

check_imports() {
  python3 - <<'PY'
import importlib

modules = [
    "SimpleITK", "nibabel", "pydicom", "pynetdicom", "pydantic", "blosc2", "cc3d",
    "config.inference", "conversion", "inference.gpu_resample", "inference.engine", "inference.nnunet_models",
    "nnunetv2.inference.predict_from_raw_data", "dicom2nifti", "totalsegmentator.bin.TotalSegmentator",
]
failed = []
for name in modules:
    try:
        importlib.import_module(name)
        print("  import ok:", name)
    except Exception as exc:  # report every failing import, not only the first
        failed.append(name)
        print(f"  import FAILED: {name}: {type(exc).__name__}: {exc}")
raise SystemExit(1 if failed else 0)
PY
}

run_pytest() {
  local log="$OUT/pytest_gpu.txt"
  timeout "$PYTEST_TIMEOUT" python3 -m pytest tests/inference/test_engine_gpu.py -m gpu -q \
    -p no:cacheprovider -rs --timeout "$PYTEST_TIMEOUT" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  if grep -qE "[0-9]+ skipped" "$log" && ! grep -qE "[0-9]+ passed" "$log"; then
    echo "gpu tests were skipped (no CUDA device seen by torch)"
    return 1
  fi
  return "$rc"
}

build_weights() {
  timeout "$WEIGHTS_TIMEOUT" python3 scripts/make_fullsize_models.py --out "$WEIGHTS"
}

run_fullsize() {
  timeout "$FULLSIZE_TIMEOUT" python3 tests/bench/bench_inference.py --fullsize "$WEIGHTS" --device cuda \
    --official-device gpu ${FULLSIZE_ARGS:-} "$@"
}

run_queue() {
  timeout "$FULLSIZE_TIMEOUT" python3 tests/bench/bench_inference.py --fullsize "$WEIGHTS" --device cuda \
    --skip-official --queue "$QUEUE" "$@"
}

run_bench() {
  timeout "$BENCH_TIMEOUT" python3 tests/bench/bench_inference.py --device cuda --official-device gpu \
    --runs "$BENCH_RUNS" --official-runs "$OFFICIAL_RUNS" ${BENCH_ARGS:-} "$@"
}

main() {
  echo "SegNode GPU device run, $(date -u), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if [[ "${SKIP_INSTALL:-0}" == 1 ]]; then
    echo "SKIP_INSTALL=1: using the packages already in $SITE"
  else
    step install install_deps
  fi
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
  step env show_env
  step imports check_imports
  step pytest run_pytest
  if [[ "${FULLSIZE:-0}" == 1 ]]; then
    step weights build_weights
    step fullsize run_fullsize
    step queue run_queue
  else
    step bench-default run_bench
    step bench-fast run_bench --fast
  fi
  echo
  if [[ ${#FAILED[@]} -eq 0 ]]; then
    echo "=== ALL STEPS OK"
  else
    echo "=== FAILED STEPS: ${FAILED[*]}"
    return 1
  fi
}

main 2>&1 | tee "$OUT/gpu_log.txt"
exit "${PIPESTATUS[0]}"
