"""Benchmark: per-series latency of SegNode's warm engine vs the official ``TotalSegmentator -ta total_mr``.

Both run the same weights (default: the tiny test models in tests/data/models; pass ``--weights`` for the
real ones) on the same DICOM series. The anchor, the official command, is measured in the same run:
``TotalSegmentator -i DICOM_DIR -o out.nii.gz --ml -ta total_mr -d cpu [--fast]`` (offline, no usage
statistics; see tests/inference/official_totalseg.py). SegNode is measured end to end per series
(``conversion.load_series`` + ``Engine.segment``) with its predictors warm (built by a first, untimed call
whose time is printed as "cold"). Medians of ``--runs`` runs; time per stage for both.

Usage: ``python tests/bench/bench_inference.py [--runs 3] [--fast] [--device cpu|cuda] [--series DIR ...]``

``--fullsize [DIR]``: the benchmark at real scale instead (tests/bench/bench_fullsize.py; full-size networks
from scripts/make_fullsize_models.py, default DIR /work/fullsize-weights): every other argument goes to it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.support

from config.inference import InferenceConfig
from conversion import load_series
from inference.engine import Engine
from tests.inference.official_totalseg import copy_weights, run_totalsegmentator
from tests.support.paths import MODELS, SHARED_MRI, T2_SAG

DEFAULT_SERIES = [
    T2_SAG,
    SHARED_MRI / "cmb_crc_abdomen" / "SCAN_001_AX_T2",
]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> int:
    if "--fullsize" in sys.argv:
        from tests.bench.bench_fullsize import main as fullsize

        rest = sys.argv[1:]
        at = rest.index("--fullsize")
        value = rest[at + 1 : at + 2]
        if value and not value[0].startswith("--"):
            return fullsize(["--weights", value[0], *rest[:at], *rest[at + 2 :]])
        return fullsize(rest[:at] + rest[at + 1 :])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", nargs="+", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per series and side (median)")
    parser.add_argument("--official-runs", type=int, default=None, help="runs of the official command")
    parser.add_argument("--fast", action="store_true", help="total_mr --fast (model 852)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", type=Path, default=MODELS)
    parser.add_argument("--official-device", default="cpu", help="-d of the official command: cpu | gpu")
    parser.add_argument("--skip-official", action="store_true", help="only SegNode (e.g. on a GPU machine)")
    args = parser.parse_args()
    series = [s for s in (args.series or DEFAULT_SERIES) if s.is_dir()]
    official_runs = args.official_runs or args.runs
    engine = Engine(InferenceConfig(weights_dir=args.weights, device=args.device))
    mode = "fast" if args.fast else "default"
    print(
        f"total_mr {mode}; SegNode device {args.device}, official -d {args.official_device}; "
        f"weights {args.weights}; {args.runs} runs (median)"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="segnode_bench_") as tmp:
        tmpdir = Path(tmp)
        weights_copy = None if args.skip_official else copy_weights(args.weights, tmpdir / "weights")
        for folder in series:
            files = sorted(p for p in folder.rglob("*") if p.is_file())
            cold_start = time.perf_counter()
            volume = load_series(files)[0]
            engine.segment(volume.voxels, volume.affine, fast=args.fast)
            cold = time.perf_counter() - cold_start
            ours: list[float] = []
            stages: dict[str, list[float]] = {}
            for _ in range(args.runs):
                start = time.perf_counter()
                volume = load_series(files)[0]
                loaded = time.perf_counter()
                result = engine.segment(volume.voxels, volume.affine, fast=args.fast)
                ours.append(time.perf_counter() - start)
                stages.setdefault("load_series", []).append(loaded - start)
                for name, seconds in result.timings.items():
                    stages.setdefault(name, []).append(seconds)
            official: list[float] = []
            official_stages: dict[str, list[float]] = {}
            if weights_copy is not None:
                for run in range(official_runs):
                    done = run_totalsegmentator(
                        folder,
                        tmpdir / f"ts_{run}.nii.gz",
                        weights_copy,
                        tmpdir / "home",
                        fast=args.fast,
                        device=args.official_device,
                    )
                    official.append(done.seconds)
                    for name, seconds in done.stages.items():
                        official_stages.setdefault(name, []).append(seconds)
            rows.append((folder.name, volume.shape, cold, ours, stages, official, official_stages))

    print()
    print(f"{'series':<44} {'shape':<16} {'official s':>10} {'SegNode s':>10} {'cold s':>8} {'ratio':>7}")
    for name, shape, cold, ours, _, official, _ in rows:
        ratio = median(official) / median(ours) if official else float("nan")
        shape_text = "x".join(str(n) for n in shape)
        print(
            f"{name[:44]:<44} {shape_text:<16} {median(official):>10.2f} {median(ours):>10.2f} "
            f"{cold:>8.2f} {ratio:>6.1f}x"
        )
    print()
    print("time per stage (median s)")
    for name, _, _, _, stages, _, official_stages in rows:
        ours_text = ", ".join(f"{k} {median(v):.2f}" for k, v in stages.items())
        print(f"  {name[:44]}")
        print(f"    SegNode : {ours_text}")
        if official_stages:
            theirs = ", ".join(f"{k} {median(v):.2f}" for k, v in official_stages.items())
            print(f"    official: {theirs} (rest: dicom2nifti, process start, model loading, temp files)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
