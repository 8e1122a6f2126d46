"""Benchmark at real scale: SegNode's warm engine vs the official TotalSegmentator 2.18, full-size networks.

``python tests/bench/bench_inference.py --fullsize [DIR]`` runs this (or run it directly). The weights are the
random-initialised networks of the published ``total_mr`` architectures that
``scripts/make_fullsize_models.py`` writes (default folder ``/work/fullsize-weights``); both sides run the
same files.

Per mode (default: 850 + 851 at 1.5 mm; ``--fast``: 852 at 3 mm) and series (default: an abdominal axial T2,
a sagittal T2, a large field of view; see FULLSIZE_SERIES):

* official: ``TotalSegmentator -i DIR -o out.nii.gz --ml -ta total_mr [-d gpu] [--fast]``, one process per
  series as in production (model load, dicom2nifti, temporary files); wall time and the peak resident memory
  of its process tree (sampled every 0.2 s); ``--official-runs N`` runs it N times per series and compares
  the medians: the tree's peak depends on how far nnU-Net's spawned worker processes have got with their
  imports at the main process's peak (3.1 to 5.6 GB for the same fast series);
* SegNode: one worker process per mode and precision holding a warm :class:`inference.engine.Engine` (models
  loaded before the first series, not timed, as a running node has them); per series ``load_series`` +
  ``Engine.segment``, wall time, the worker's peak resident memory while it ran the series (process tree,
  models included) and the peak CUDA memory;
* per-label Dice between SegNode's and the official label maps (nibabel's closest canonical grid): the
  minimum over labels and the labels under 0.999. ``fp32`` is the exactness check; ``bf16`` (``--precisions
  fp32,bf16``) shows what the opt-in reduced precision costs on these random weights (near-tied logits).
  ``--compile auto,off`` runs SegNode with its networks compiled (``inference.cpu_compile``, the default) and
  uncompiled: the same fp32 arithmetic, but compiled kernels add in another order, so where random weights
  leave two classes tied to ~1e-5 a voxel may flip (the low labels are printed with their voxel counts).
  ``--memory hugepages,reuse,system`` runs it with each host-memory setting (``inference.cpu_memory``;
  ``hugepages``, the default: tensors on 2 MB pages; ``reuse``: freed blocks kept for the next tile, no page
  faults but a higher peak; ``system``: glibc's and torch's defaults).

``--queue N`` (SegNode only, with ``--skip-official`` for a pure throughput run): N series, the given ones
repeated, through one warm worker; series/hour and the time the models ran (device busy time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.support

from tests.inference.official_totalseg import run_totalsegmentator
from tests.support.paths import PD_TRA, ROOT, SHARED_MRI, T2_COR, T2_SAG
from tests.support.rss import TreeRssSampler

DEFAULT_WEIGHTS = Path("/work/fullsize-weights")
FULLSIZE_SERIES = [
    # abdominal axial T2, 33 slices 584x512, 0.68 x 0.68 x 8 mm (field of view 400 x 350 x 260 mm)
    SHARED_MRI / "cmb_crc_abdomen" / "SCAN_001_AX_T2",
    # sagittal T2 of the prostate, 19 slices 320x320, 0.56 x 0.56 x 3.6 mm
    T2_SAG,
    # large field of view: abdominal ADC map, 36 slices 288x256, 1.56 x 1.56 x 6 mm (450 x 400 x 216 mm)
    SHARED_MRI / "cmb_crc_abdomen" / "SCAN_001_ADC",
]
#: In place of the series above that are absent (a checkout without ../shared, e.g. on a lent GPU machine).
FALLBACK_SERIES = [T2_COR, PD_TRA]
GB = 1024**3


def worker(args: argparse.Namespace) -> int:
    """The SegNode side: a warm engine, series given on the command line, one JSON line per series."""
    from config.inference import InferenceConfig
    from conversion import load_series
    from inference.engine import Engine
    from inference.host_memory import configure_host_memory

    device = "cuda" if args.device in ("cuda", "gpu") else args.device
    config = InferenceConfig(
        weights_dir=args.weights,
        device=device,
        cpu_precision=args.precision,
        cpu_compile=args.compile_setting,
        cpu_memory=args.memory_setting,
    )
    configure_host_memory(config.cpu_memory)  # as segnode serve / worker / segment do at start
    engine = Engine(config)
    start = time.perf_counter()
    engine.warm_up("total_mr", fast=args.fast)
    print(json.dumps({"warm_s": time.perf_counter() - start}), flush=True)
    import torch

    cuda = engine.device.type == "cuda"
    for index, folder in enumerate(args.series):
        print(json.dumps({"start": index}), flush=True)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        begin = time.perf_counter()
        volume = load_series(sorted(p for p in Path(folder).rglob("*") if p.is_file()))[0]
        result = engine.segment(volume.voxels, volume.affine, fast=args.fast)
        seconds = time.perf_counter() - begin
        out = Path(args.out) / f"{index}.npz"
        np.savez(out, labels=result.labels, affine=volume.affine_ras)
        busy = sum(v for k, v in result.timings.items() if k.startswith("predict_"))
        vram = torch.cuda.max_memory_allocated() if cuda else 0
        event = {"done": index, "s": seconds, "busy_s": busy, "vram": vram, "file": str(out)}
        print(json.dumps(event), flush=True)
    return 0


def run_worker(
    series: list[Path], weights: Path, device: str, variant: tuple[str, str, str], fast: bool, out: Path
) -> tuple[float, list[dict[str, Any]]]:
    """Start a worker, return (warm-up s, per series {s, busy_s, vram, rss, file})."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--weights", str(weights)]
    command += ["--device", device, "--precision", variant[0], "--compile-setting", variant[1]]
    command += ["--memory-setting", variant[2]]
    command += ["--out", str(out)]
    command += ["--series", *map(str, series)]
    if fast:
        command.append("--fast")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rows: list[dict[str, Any]] = []
    warm = float("nan")
    with (
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as child,
        TreeRssSampler(child.pid) as sampler,
    ):
        assert child.stdout is not None
        for line in child.stdout:
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            if "warm_s" in event:
                warm = event["warm_s"]
            elif "start" in event:
                sampler.reset()
            elif "done" in event:
                rows.append({**event, "rss": sampler.peak})
    if child.returncode != 0:
        raise RuntimeError(f"SegNode worker failed (exit {child.returncode}): {command}")
    return warm, rows


def label_dice(ours_file: str, official_file: Path) -> tuple[float, dict[int, str]]:
    """(minimum per-label Dice, labels under 0.999: their Dice and voxels SegNode/official) of two label maps
    on the same grid."""
    import nibabel as nib

    saved = np.load(ours_file)
    ours = nib.as_closest_canonical(nib.Nifti1Image(saved["labels"], saved["affine"]))
    official = nib.as_closest_canonical(nib.load(official_file))
    if ours.shape != official.shape:
        raise RuntimeError(f"grids differ: SegNode {ours.shape}, official {official.shape}")
    a = np.asanyarray(ours.dataobj).astype(np.int32)
    b = np.asanyarray(official.dataobj).astype(np.int32)
    scores, sizes = {}, {}
    for label in sorted((set(np.unique(a)) | set(np.unique(b))) - {0}):
        x, y = a == label, b == label
        sizes[int(label)] = f"{int(x.sum())}/{int(y.sum())} voxels"
        scores[int(label)] = 2.0 * float((x & y).sum()) / float(x.sum() + y.sum())
    low = {k: f"{v:.4f} ({sizes[k]})" for k, v in scores.items() if v < 0.999}
    return (min(scores.values()) if scores else 1.0), low


def run_mode(args: argparse.Namespace, fast: bool, tmp: Path) -> list[str]:
    """Both sides on every series in one mode; the table lines."""
    mode = "fast" if fast else "default"
    official: list[tuple[float, int, Path] | None] = []
    for index, folder in enumerate(args.series):
        if args.skip_official:
            official.append(None)
            continue
        out = tmp / f"official_{mode}_{index}.nii.gz"
        runs = []
        for _ in range(args.official_runs):  # the same output each time (the weights and input are fixed)
            done = run_totalsegmentator(
                folder, out, args.weights, tmp / "home", fast=fast, device=args.official_device, timeout=7200
            )
            runs.append((done.seconds, done.peak_rss))
        seconds = statistics.median(r[0] for r in runs)
        rss = statistics.median(r[1] for r in runs)
        official.append((seconds, int(rss), out))
        each = ", ".join(f"{s:.1f} s {r / GB:.2f} GB" for s, r in runs)
        print(f"  official {mode} {folder.name}: median {seconds:.1f} s, tree {rss / GB:.2f} GB ({each})")
    lines = []
    variants = [(p, c, m) for p in args.precisions for c in args.compile for m in args.memory]
    for precision, setting, memory in variants:
        series = [args.series[i % len(args.series)] for i in range(args.queue or len(args.series))]
        out = tmp / f"ours_{mode}_{precision}_{setting}_{memory}"
        warm, rows = run_worker(series, args.weights, args.device, (precision, setting, memory), fast, out)
        precision = f"{precision} compile {setting}" + ("" if memory == "hugepages" else f" memory {memory}")
        print(f"  SegNode {mode} {precision}: models loaded (and compiled) in {warm:.1f} s (not counted)")
        if args.queue:
            total = sum(r["s"] for r in rows)
            busy = sum(r["busy_s"] for r in rows)
            lines.append(
                f"queue {mode} {precision}: {len(rows)} series in {total:.1f} s = "
                f"{3600 * len(rows) / total:.0f} series/hour; models busy {busy:.1f} s "
                f"({100 * busy / total:.0f} %); peak VRAM "
                f"{max(r['vram'] for r in rows) / GB:.2f} GB"
            )
            continue
        for index, row in enumerate(rows):
            anchor = official[index]
            name = args.series[index].name[:30]
            vram = f" VRAM {row['vram'] / GB:.2f} GB" if row["vram"] else ""
            text = f"{mode:<7} {precision:<17} {name:<30} SegNode {row['s']:7.1f} s "
            text += f"RSS {row['rss'] / GB:5.2f} GB{vram}"
            if anchor is not None:
                seconds, rss, out = anchor
                worst, low = label_dice(row["file"], out)
                text += (
                    f" | official {seconds:7.1f} s tree {rss / GB:5.2f} GB | "
                    f"{seconds / row['s']:4.2f}x faster, RSS {row['rss'] / rss:4.2f}x | min Dice {worst:.4f}"
                )
                if low:
                    text += f" (<0.999: {len(low)} labels {dict(list(low.items())[:6])})"
            lines.append(text)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--series", nargs="+", type=Path, default=None)
    parser.add_argument("--modes", default="default,fast", help="default,fast | default | fast")
    parser.add_argument("--fast", action="store_true", help="only --fast (same as --modes fast)")
    parser.add_argument("--precisions", default="fp32", help="SegNode CPU precisions: fp32 | fp32,bf16")
    parser.add_argument("--compile", default="auto", help="SegNode cpu_compile: auto | off | auto,off")
    parser.add_argument("--memory", default="hugepages", help="SegNode cpu_memory: hugepages,reuse,system")
    parser.add_argument("--device", default="cpu", help="SegNode: cpu | cuda")
    parser.add_argument("--official-device", default="cpu", help="-d of the official command: cpu | gpu")
    parser.add_argument("--skip-official", action="store_true")
    parser.add_argument(
        "--official-runs",
        type=int,
        default=1,
        help="official runs per series, the medians compared (its process tree's peak varies between runs)",
    )
    parser.add_argument("--queue", type=int, default=0, help="N series through one warm worker (throughput)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--compile-setting", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--memory-setting", default="hugepages", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    args.precisions = args.precisions.split(",")
    args.compile = args.compile.split(",")
    args.memory = args.memory.split(",")
    modes = ["fast"] if args.fast else args.modes.split(",")
    if args.series is None:
        present = [s for s in FULLSIZE_SERIES if s.is_dir()]
        args.series = present + FALLBACK_SERIES[: len(FULLSIZE_SERIES) - len(present)]
    if not (args.weights / "Dataset850_TotalSegMRI_part1_organs_1088subj").is_dir():
        raise SystemExit(f"no full-size weights in {args.weights}: scripts/make_fullsize_models.py --out DIR")
    print(
        f"full-size total_mr, weights {args.weights}; SegNode {args.device} ({','.join(args.precisions)}), "
        f"official -d {args.official_device}; {len(args.series)} series; load average {os.getloadavg()}"
    )
    lines = []
    with tempfile.TemporaryDirectory(prefix="segnode_fullsize_") as tmp:
        for mode in modes:
            lines += run_mode(args, mode == "fast", Path(tmp))
    print(f"\nload average at the end {os.getloadavg()}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
