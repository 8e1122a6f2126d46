"""Benchmark: time to load a series into volumes, SegNode vs dicom2nifti (in memory) vs dcm2niix.

Run: ``python tests/bench/bench_conversion.py [--repeat N] [ROOT ...]`` (default roots: tests/data/mri and
../shared/data/mri when present). For every series folder it times, in the same run and on the same files:

* SegNode: ``conversion.load_series(paths)`` (headers once, pixels decoded into the output array);
* dicom2nifti: ``dcmread`` of every file + ``convert_dicom.dicom_array_to_nifti(datasets, None,
  reorient_nifti=False)``, which builds the NIfTI in memory (no file written);
* dcm2niix: the Debian binary as a subprocess writing uncompressed NIfTI into a temporary folder (the way a
  pipeline would call it; its process start and file write are part of what it costs).

The best of ``--repeat`` runs is reported (warm file cache). Ratios > 1 mean SegNode is faster. Series one
of the tools cannot convert are shown with its error instead of a time.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from conversion import NotSegmentableError, load_series  # noqa: E402

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


def _best(fn: Callable[[], object], repeat: int) -> tuple[float | None, str]:
    best: float | None = None
    note = ""
    for _ in range(repeat):
        start = time.perf_counter()
        try:
            result = fn()
        except NotSegmentableError as exc:
            return None, f"rejected: {exc.reason}"
        except ConversionError as exc:
            return None, f"fails: {type(exc).__name__}"
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)
        if isinstance(result, list):
            note = f"{len(result)} vol"
    return best, note


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
    roots = args.roots or [
        p for p in (ROOT / "tests" / "data" / "mri", ROOT.parent / "shared" / "data" / "mri") if p.is_dir()
    ]
    header = (
        f"{'series':62} {'files':>5} {'SegNode s':>10} {'d2nifti s':>10} {'dcm2niix s':>10} "
        f"{'vs d2n':>7} {'vs niix':>7}"
    )
    print(header)
    print("-" * len(header))
    totals = [0.0, 0.0, 0.0]
    for root in roots:
        for folder in sorted({p.parent for p in root.rglob("*.dcm")}):
            files = sorted(folder.glob("*.dcm"))
            ours, note = _best(_segnode(files), args.repeat)
            d2n, d2n_note = _best(_dicom2nifti(files), args.repeat)
            niix, niix_note = _best(_dcm2niix(folder), args.repeat)

            def fmt(v: float | None, n: str) -> str:
                return f"{v:10.4f}" if v is not None else f"{n[:10]:>10}"

            r1 = f"{d2n / ours:7.2f}" if ours and d2n else f"{'-':>7}"
            r2 = f"{niix / ours:7.2f}" if ours and niix else f"{'-':>7}"
            name = f"{root.name}/{folder.relative_to(root)}"[-62:]
            times = f"{fmt(ours, note)} {fmt(d2n, d2n_note)} {fmt(niix, niix_note)}"
            print(f"{name:62} {len(files):5d} {times} {r1} {r2}")
            if ours and d2n and niix:
                totals[0] += ours
                totals[1] += d2n
                totals[2] += niix
    if totals[0]:
        print("-" * len(header))
        print(
            f"{'total over series all three convert':62} {'':5} {totals[0]:10.4f} {totals[1]:10.4f} "
            f"{totals[2]:10.4f} {totals[1] / totals[0]:7.2f} {totals[2] / totals[0]:7.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
