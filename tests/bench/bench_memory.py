"""Memory at real scale: a 512x512x800 MR series through ``segnode segment``, full-size networks, CPU.

The series is synthesised from a real one by repetition: the slices of an axial 512x512 series (default: the
soft-tissue sarcoma T1 SE of ../shared, 40 slices) repeated in order to 800 slices, each with its own SOP
Instance UID, instance number and position, pixel spacing ``--pixel-spacing`` (default 0.8 mm) and slice step
``--slice-step`` (default 1.0 mm): a 410 x 410 x 800 mm volume, like a 3D acquisition of the trunk, which at
1.5 mm is 273 x 273 x 533 voxels for the part models (logits of model 850: 30 classes x 40 M voxels).

``segnode segment DIR --out OUT [--fast] --device cpu --seg none`` runs in a child process (weights from
``--weights`` through ``TOTALSEG_WEIGHTS_PATH``, ``--precision`` through a configuration file); the peak
resident memory of its process tree is sampled every 0.2 s and printed with the wall time and load average.

Usage: ``python tests/bench/bench_memory.py [--weights /work/fullsize-weights] [--fast] [--precision bf16]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.support

from tests.support.paths import ROOT, SHARED_MRI
from tests.support.rss import TreeRssSampler

SOURCE = SHARED_MRI / "sts_sarcoma" / "STS_001_raw_AX_SE_T1"
GB = 1024**3


def synthesise(source: Path, folder: Path, slices: int, pixel_spacing: float, step: float) -> None:
    """``slices`` 512x512 axial slices repeating those of ``source`` (sorted by position)."""
    real = [pydicom.dcmread(p) for p in sorted(source.iterdir()) if p.is_file() and p.name != "LICENSE"]
    real.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    if any((ds.Rows, ds.Columns) != (512, 512) for ds in real):
        raise SystemExit(f"{source}: not 512x512")
    series_uid = str(generate_uid(entropy_srcs=["bench-memory", str(slices)]))
    origin = np.array([-256 * pixel_spacing, -256 * pixel_spacing, -slices * step / 2])
    for k in range(slices):
        ds = real[k % len(real)]
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = str(generate_uid(entropy_srcs=["bench-memory", str(slices), str(k)]))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.InstanceNumber = k + 1
        ds.PixelSpacing = [pixel_spacing, pixel_spacing]
        ds.SliceThickness = step
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [float(origin[0]), float(origin[1]), float(origin[2] + k * step)]
        ds.SliceLocation = float(origin[2] + k * step)
        ds.save_as(folder / f"{k + 1:04d}.dcm", enforce_file_format=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=Path("/work/fullsize-weights"))
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--slices", type=int, default=800)
    parser.add_argument("--pixel-spacing", type=float, default=0.8)
    parser.add_argument("--slice-step", type=float, default=1.0)
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--precision", default="fp32", help="inference.cpu_precision: fp32 | bf16")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="segnode_memory_") as tmp:
        series = Path(tmp) / "series"
        series.mkdir()
        start = time.perf_counter()
        synthesise(args.source, series, args.slices, args.pixel_spacing, args.slice_step)
        print(f"wrote 512x512x{args.slices} from {args.source.name} in {time.perf_counter() - start:.0f} s")
        config = Path(tmp) / "segnode.yaml"
        config.write_text(f"inference:\n  cpu_precision: {args.precision}\n", encoding="utf-8")
        command = [
            sys.executable,
            "-m",
            "dicom_node.cli",
            "segment",
            str(series),
            "--out",
            str(Path(tmp) / "out"),
        ]
        command += ["--device", "cpu", "--seg", "none", "--config", str(config)] + (
            ["--fast"] if args.fast else []
        )
        env = dict(os.environ, TOTALSEG_WEIGHTS_PATH=str(args.weights))
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        print(f"{' '.join(command[1:])}; load average {os.getloadavg()}", flush=True)
        start = time.perf_counter()
        with subprocess.Popen(command, env=env, cwd=ROOT) as child, TreeRssSampler(child.pid) as sampler:
            child.wait()
        seconds = time.perf_counter() - start
        outputs = sorted(p.name for p in (Path(tmp) / "out").glob("*"))
    print(
        f"exit {child.returncode}; {seconds:.0f} s; peak RSS of the process tree {sampler.peak / GB:.2f} GB; "
        f"outputs {outputs}; load average {os.getloadavg()}"
    )
    return child.returncode


if __name__ == "__main__":
    raise SystemExit(main())
