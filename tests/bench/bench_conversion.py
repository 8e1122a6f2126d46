"""Benchmark: time to load a series into volumes, SegNode vs dicom2nifti (in memory) vs dcm2niix.

Run: ``python tests/bench/bench_conversion.py [--repeat N] [ROOT ...]`` (default roots: tests/data/mri and
../shared/data/mri when present). For every series folder it times, in the same run and on the same files:

* SegNode: ``conversion.load_series(paths)`` (headers once, pixels decoded into the output array);
* dicom2nifti: ``dcmread`` of every file + ``convert_dicom.dicom_array_to_nifti(datasets, None,
  reorient_nifti=False)``, which builds the NIfTI in memory (no file written);
* dcm2niix: the Debian binary as a subprocess writing uncompressed NIfTI into a temporary folder (the way a
  pipeline would call it; its process start and file write are part of what it costs).

The best of ``--repeat`` runs is reported (warm file cache; the three tools take turns run by run), as wall
time and as CPU time (user + system of this process for the Python tools, of the child process for
dcm2niix). Ratios > 1 mean SegNode is faster. Series a tool cannot convert show its error.
"""

from __future__ import annotations

import argparse
import logging
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from conversion import NotSegmentableError, load_series
from tests.support.paths import SHARED_MRI, TEST_MRI

try:
    from dicom2nifti.exceptions import ConversionError as D2NError
    from dicom2nifti.exceptions import ConversionValidationError as D2NValidationError
except ImportError:  # dicom2nifti is a test extra; the table then shows it as unavailable
    D2NError = D2NValidationError = RuntimeError  # type: ignore[misc,assignment]

#: What a converter raises when it cannot convert a series (shown in the table, not a crash).
ConversionError = (
    RuntimeError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    D2NError,
    D2NValidationError,
)


@dataclass
class Timing:
    wall: float | None = None
    cpu: float | None = None
    note: str = ""


def _cpu_now() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _best(fns: list[Callable[[], object]], repeat: int) -> list[Timing]:
    """Best of ``repeat`` runs of each function, the functions taking turns (run 1 of each, then run 2 of
    each, ...), so that a slow spell of a shared machine weighs on all of them alike."""
    timings = [Timing() for _ in fns]
    for _ in range(repeat):
        for fn, timing in zip(fns, timings, strict=True):
            if timing.note.startswith(("rejected", "fails")):
                continue
            wall0, cpu0 = time.perf_counter(), _cpu_now()
            try:
                result = fn()
            except NotSegmentableError as exc:
                timing.wall = timing.cpu = None
                timing.note = f"rejected: {exc.reason}"
                continue
            except ConversionError as exc:
                timing.wall = timing.cpu = None
                timing.note = f"fails: {type(exc).__name__}"
                continue
            wall, cpu = time.perf_counter() - wall0, _cpu_now() - cpu0
            timing.wall = wall if timing.wall is None else min(timing.wall, wall)
            timing.cpu = cpu if timing.cpu is None else min(timing.cpu, cpu)
            if isinstance(result, list):
                timing.note = f"{len(result)} vol"
    return timings


def _segnode(files: list[Path]) -> Callable[[], object]:
    return lambda: load_series(files)


def _dicom2nifti(files: list[Path]) -> Callable[[], object]:
    from dicom2nifti import convert_dicom

    def run() -> object:
        datasets = [pydicom.dcmread(f) for f in files]
        return convert_dicom.dicom_array_to_nifti(datasets, None, reorient_nifti=False)

    return run


def _dcm2niix(folder: Path) -> Callable[[], object]:
    def run() -> object:
        out = Path(tempfile.mkdtemp(prefix="bench_dcm2niix_"))
        try:
            proc = subprocess.run(
                ["dcm2niix", "-z", "n", "-b", "n", "-o", str(out), str(folder)],
                capture_output=True,
                check=False,
            )
            if proc.returncode not in (0, 2) or not list(out.glob("*.nii")):
                raise RuntimeError("dcm2niix produced no volume")
            return None
        finally:
            shutil.rmtree(out)

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    roots = args.roots or [p for p in (TEST_MRI, SHARED_MRI) if p.is_dir()]
    header = (
        f"{'series':56} {'files':>5} {'SegNode':>8} {'d2nifti':>8} {'dcm2niix':>8} "
        f"{'wall x d2n':>10} {'x niix':>7} {'cpu x d2n':>10} {'x niix':>7}"
    )
    print("times: best wall seconds; ratios: other tool's time / SegNode's (> 1: SegNode faster)")
    print(header)
    print("-" * len(header))
    totals = {"ours": [0.0, 0.0], "d2n": [0.0, 0.0], "niix": [0.0, 0.0]}
    for root in roots:
        for folder in sorted({p.parent for p in root.rglob("*.dcm")}):
            files = sorted(folder.glob("*.dcm"))
            ours, d2n, niix = _best([_segnode(files), _dicom2nifti(files), _dcm2niix(folder)], args.repeat)
            cells = [
                f"{t.wall:8.4f}" if t.wall is not None else f"{t.note[:8]:>8}" for t in (ours, d2n, niix)
            ]
            ratios = [
                _ratio(other.wall, ours.wall, 10 if n == 0 else 7) for n, other in enumerate((d2n, niix))
            ] + [_ratio(other.cpu, ours.cpu, 10 if n == 0 else 7) for n, other in enumerate((d2n, niix))]
            name = f"{root.name}/{folder.relative_to(root)}"[-56:]
            print(f"{name:56} {len(files):5d} {' '.join(cells)} {' '.join(ratios)}")
            if all(t.wall is not None and t.cpu is not None for t in (ours, d2n, niix)):
                for key, t in (("ours", ours), ("d2n", d2n), ("niix", niix)):
                    totals[key][0] += t.wall or 0.0
                    totals[key][1] += t.cpu or 0.0
    if totals["ours"][0]:
        print("-" * len(header))
        o, d, n = totals["ours"], totals["d2n"], totals["niix"]
        ratios = [
            _ratio(d[0], o[0], 10),
            _ratio(n[0], o[0], 7),
            _ratio(d[1], o[1], 10),
            _ratio(n[1], o[1], 7),
        ]
        print(
            f"{'total over series all three convert':56} {'':5} {o[0]:8.4f} {d[0]:8.4f} {n[0]:8.4f} "
            f"{' '.join(ratios)}"
        )
    return 0


def _ratio(other: float | None, ours: float | None, width: int) -> str:
    if not other or not ours:
        return f"{'-':>{width}}"
    return f"{other / ours:{width}.2f}"


if __name__ == "__main__":
    raise SystemExit(main())
