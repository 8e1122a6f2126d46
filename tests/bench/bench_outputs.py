"""Benchmark: time per output kind (volumetry SR, overlay series, RTSTRUCT) beside the DICOM-SEG of the same
stack, for a 512x512 x N series with all 50 structures of ``total_mr``.

Run: ``python tests/bench/bench_outputs.py [--slices 120] [--repeat 2]``

The series and label map are those of ``bench_seg.py`` (synthetic series with the headers of a real test
instance; 50 adjacent regions filling a body-shaped ellipse), with a smooth intensity pattern in the voxels
so that the overlay's windowing has something to do, held in the order in which ``load_series`` holds a
stack's voxels. Each kind is timed from the Volume and label map to its files on disk (encoding and
writing; validation with dciodvfy is not included, as in bench_seg):

- SEG: ``encode_seg`` (BINARY, SegNode's fast frame assembly) + write, the anchor;
- SR: ``label_layout`` (the label map in slice order with its counts and boxes, made once per stack for the
  overlay and the RTSTRUCT, as the node does where the route asks for either) + ``volumetry.measure`` (which
  takes its counts from it, and gives the labels present to the other kinds, as the node does)
  + ``encode_volumetry_sr`` + write;
- overlay: ``encode_overlay`` + write (one file per slice, each written as it is drawn, with the series'
  writer, as the node does);
- RTSTRUCT: ``encode_rtstruct`` + write.

Goal (issue 13): all four kinds together take less than twice the SEG's time alone (the SR, overlay and
RTSTRUCT together less than the SEG); the last line gives that verdict.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "bench"))

from bench_seg import make_label_map, make_series, timed  # noqa: E402

from dicom_node.outputs import volumetry  # noqa: E402
from dicom_node.outputs.derived import DerivedContext  # noqa: E402
from dicom_node.outputs.label_layout import LabelLayout, label_layout  # noqa: E402
from dicom_node.outputs.overlay import encode_overlay  # noqa: E402
from dicom_node.outputs.rtstruct import encode_rtstruct  # noqa: E402
from dicom_node.outputs.seg import AlgorithmInfo, SegOptions, encode_seg, segments_from_catalog  # noqa: E402
from dicom_node.outputs.sr import encode_volumetry_sr  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=120)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-outputs-") as tmp:
        folder = Path(tmp)
        (folder / "series").mkdir()
        volume = make_series(folder / "series", args.slices)
        i, j, k = np.mgrid[0 : volume.shape[0], 0 : volume.shape[1], 0 : volume.shape[2]]
        pattern = (500 + 300 * np.sin(i / 40) * np.cos(j / 55) + 5 * k).astype(np.float32)
        # held as load_series holds a stack's voxels (Fortran order: each slice contiguous), which the
        # overlay windows and reads slice by slice
        volume = dataclasses.replace(volume, voxels=np.asfortranarray(pattern))
        labels = make_label_map(args.slices)
        segments = segments_from_catalog("total_mr")
        algorithm = AlgorithmInfo("TotalSegmentator", "total_mr", "bench")
        options = SegOptions()
        context = DerivedContext(volume, algorithm, options)
        names = volumetry.catalog_names("total_mr")
        out = folder / "out"
        out.mkdir()
        seg_holder: list[object] = []

        def seg() -> None:
            encoded = encode_seg(volume, labels, segments, algorithm, options)
            encoded.dataset.save_as(out / "seg.dcm", enforce_file_format=True)
            seg_holder[:] = [encoded]

        counted: list[int] = []
        layouts: list[LabelLayout] = []

        def sr() -> None:
            layouts[:] = [label_layout(labels)]  # the node makes it once, for the kinds that read it
            report = volumetry.measure(volume, labels, "total_mr", names, layouts[0])
            counted[:] = report.labels  # the node counts the labels once, for the volumetry
            encoded = encode_volumetry_sr(context, report, seg_holder[0], segments)  # type: ignore[arg-type]
            encoded.dataset.save_as(out / "sr.dcm", enforce_file_format=True)

        def overlay() -> None:
            encoded = encode_overlay(context, labels, segments, counted, layouts[0])
            # written as the node writes them: each image as it is drawn, before the next is drawn
            for n, ds in enumerate(encoded.images()):
                with open(out / f"overlay-{n}.dcm", "wb") as fh:
                    encoded.writer.write(ds, fh)

        def rtstruct() -> None:
            encode_rtstruct(context, labels, segments, counted, layouts[0]).dataset.save_as(
                out / "rt.dcm", enforce_file_format=True
            )

        kinds: dict[str, Callable[[], None]] = {
            "SEG": seg,
            "SR": sr,
            "overlay": overlay,
            "RTSTRUCT": rtstruct,
        }
        # One untimed run each: imports and highdicom's standard tables load once per process.
        for fn in kinds.values():
            fn()
        results = {name: timed(fn, args.repeat) for name, fn in kinds.items()}
    present = len([v for v in np.unique(labels) if v])
    print(f"512x512x{args.slices}, {present} structures, best of {args.repeat} runs (encode + write)")
    print(f"{'output':<10} {'wall s':>8} {'median s':>9} {'cpu s':>7} {'x SEG (cpu)':>12}")
    seg_cpu = results["SEG"][2]
    for name, (best, median, cpu) in results.items():
        print(f"{name:<10} {best:8.2f} {median:9.2f} {cpu:7.2f} {cpu / seg_cpu:12.2f}")
    extra = sum(results[name][2] for name in ("SR", "overlay", "RTSTRUCT"))
    print(f"SR + overlay + RTSTRUCT: {extra:.2f} s cpu = {extra / seg_cpu:.2f} x SEG")
    total = seg_cpu + extra
    verdict = "met" if total < 2 * seg_cpu else "NOT met"
    ratio = total / seg_cpu
    print(f"SEG + SR + overlay + RTSTRUCT: {total:.2f} s cpu = {ratio:.2f} x SEG (goal < 2 x: {verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
