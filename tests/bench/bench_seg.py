"""Benchmark: DICOM-SEG encoding of a 50-structure label map, SegNode BINARY vs LABELMAP vs TotalSegmentator.

Run: ``python tests/bench/bench_seg.py [--slices 120] [--repeat 2]``

The source series is 512x512 x N axial MR slices whose headers are those of a real test instance
(tests/data/mri/prostatex/..._9, Siemens Skyra), with the matrix set to 512x512, one position per slice
and SOP Instance UIDs derived from the slice index: a synthetic series of real-looking headers, written to a
temporary folder (TotalSegmentator's writer reads DICOM files from a folder). The label map holds all 50
labels of ``total_mr`` as adjacent regions filling about half of a body-shaped ellipse, the way organ
label maps do.

Measured in the same run, on the same label map and source series:
- SegNode ``encode_seg`` + writing the file (BINARY, BINARY + JPEG 2000, LABELMAP, LABELMAP + RLE), and BINARY
  with ``highdicom_frames=True`` (highdicom's constructor builds every frame: the reference the fast BINARY
  frame assembly is tested against);
- TotalSegmentator 2.18's ``dicom_io.save_mask_as_dicomseg`` (highdicom BINARY), which also reads the
  source files (timed separately as the reading anchor);
The table gives times, file sizes, and the ratios to TotalSegmentator's writer (the anchor).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from conversion.volume import SliceRef, Volume
from dicom_node.outputs.seg import (
    AlgorithmInfo,
    Compression,
    SegmentationType,
    SegOptions,
    encode_seg,
    segments_from_catalog,
)
from tests.support.paths import PD_TRA

HEADER_SOURCE = PD_TRA / "1-01.dcm"
SIZE = 512
SPACING = 0.8
STEP = 2.0


def make_series(folder: Path, slices: int) -> Volume:
    """Write the synthetic 512x512xN series and return its Volume (contract of conversion/volume.py)."""
    template = pydicom.dcmread(HEADER_SOURCE)
    series_uid = str(generate_uid(entropy_srcs=["bench-seg-series", str(slices)]))
    study_uid = str(template.StudyInstanceUID)
    headers = []
    refs = []
    pixels = np.zeros((SIZE, SIZE), dtype=np.uint16).tobytes()
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, 1.0, 0.0])
    origin = np.array([-SIZE * SPACING / 2, -SIZE * SPACING / 2, -slices * STEP / 2])
    for k in range(slices):
        ds = pydicom.dcmread(HEADER_SOURCE)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = str(generate_uid(entropy_srcs=["bench-seg-instance", str(slices), str(k)]))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.InstanceNumber = k + 1
        ds.Rows = ds.Columns = SIZE
        ds.PixelSpacing = [SPACING, SPACING]
        ds.SliceThickness = STEP
        ds.ImageOrientationPatient = [*row, *col]
        position = origin + k * STEP * np.cross(row, col)
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.SliceLocation = float(position[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels
        ds.save_as(folder / f"{k + 1:04d}.dcm", enforce_file_format=True)
        del ds.PixelData
        headers.append(ds)
        refs.append(SliceRef(str(ds.SOPInstanceUID), str(ds.SOPClassUID)))
    affine = np.eye(4)
    affine[:3, 0] = row * SPACING
    affine[:3, 1] = col * SPACING
    affine[:3, 2] = np.cross(row, col) * STEP
    affine[:3, 3] = origin
    return Volume(
        voxels=np.zeros((SIZE, SIZE, slices), dtype=np.float32),
        affine=affine,
        slice_refs=tuple(refs),
        frame_of_reference_uid=str(template.FrameOfReferenceUID),
        modality="MR",
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        source_headers=tuple(headers),
    )


def make_label_map(slices: int, labels: int = 50, seed: int = 0) -> np.ndarray:
    """50 adjacent regions (nearest of 50 seeds, on a coarse grid) inside a body ellipse."""
    rng = np.random.default_rng(seed)
    coarse = (SIZE // 8, SIZE // 8, max(1, slices // 4))
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in coarse), indexing="ij"), axis=-1).astype(np.float32)
    ci, cj = (coarse[0] - 1) / 2, (coarse[1] - 1) / 2
    ai, aj = 0.42 * coarse[0], 0.3 * coarse[1]
    # Seeds spread inside the body ellipse, so that every label gets a region.
    angle = rng.random(labels) * 2 * np.pi
    radius = np.sqrt(rng.random(labels)) * 0.9
    seeds = np.stack(
        [ci + ai * radius * np.cos(angle), cj + aj * radius * np.sin(angle), rng.random(labels) * coarse[2]],
        axis=1,
    ).astype(np.float32)
    nearest = np.argmin(((grid[..., None, :] - seeds) ** 2).sum(-1), axis=-1).astype(np.uint8) + 1
    ii, jj = grid[..., 0], grid[..., 1]
    nearest[((ii - ci) / ai) ** 2 + ((jj - cj) / aj) ** 2 > 1.0] = 0
    full = nearest.repeat(8, 0).repeat(8, 1).repeat(4, 2)[:SIZE, :SIZE, :slices]
    if full.shape[2] < slices:
        full = np.concatenate([full, np.zeros((SIZE, SIZE, slices - full.shape[2]), np.uint8)], axis=2)
    return np.ascontiguousarray(full)


def timed(fn, repeat: int) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    """Best and median wall time and best CPU time (this process) of ``repeat`` runs.

    The machine is shared: the best run is the least disturbed, and the CPU time does not count the time
    other processes had the cores.
    """
    times, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(times), float(np.median(times)), min(cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=120)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.simplefilter("ignore")
    from totalsegmentator import dicom_io
    from totalsegmentator.map_to_binary import class_map

    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        source = tmpdir / "series"
        source.mkdir()
        volume = make_series(source, args.slices)
        label_map = make_label_map(args.slices)
        present = int(np.count_nonzero(np.bincount(label_map.ravel(), minlength=51)[1:]))
        print(
            f"label map {label_map.shape} ({label_map.size / 1e6:.1f} Mvoxels), {present} labels present, "
            f"{np.count_nonzero(label_map) / label_map.size:.0%} labelled; "
            f"best and median of {args.repeat} run(s)"
        )
        segments = segments_from_catalog("total_mr")
        algorithm = AlgorithmInfo("TotalSegmentator", "total_mr", "2.18.0")
        # Warm-up (imports, highdicom's standard tables) on a few slices, so that no writer pays it.
        small = Volume(
            **{**volume.__dict__, "voxels": volume.voxels[:, :, :8], "slice_refs": volume.slice_refs[:8]}
        )
        small.source_headers = volume.source_headers[:8]
        encode_seg(
            small,
            np.where(label_map[:, :, :8] == 0, 1, label_map[:, :, :8]),
            segments,
            algorithm,
            SegOptions(),
        )
        rows: list[tuple[str, float, float, float, int]] = []
        variants = [
            ("SegNode BINARY", SegOptions()),
            ("SegNode BINARY, highdicom-built frames", SegOptions()),
            ("SegNode BINARY + JPEG 2000", SegOptions(compression=Compression.JPEG2000)),
            ("SegNode LABELMAP", SegOptions(segmentation_type=SegmentationType.LABELMAP)),
            (
                "SegNode LABELMAP + RLE",
                SegOptions(segmentation_type=SegmentationType.LABELMAP, compression=Compression.RLE),
            ),
        ]
        for name, options in variants:
            out = tmpdir / f"{name.replace(' ', '_')}.dcm"

            def run(
                options: SegOptions = options, out: Path = out, reference: bool = "highdicom" in name
            ) -> object:
                encoded = encode_seg(
                    volume, label_map, segments, algorithm, options, highdicom_frames=reference
                )
                encoded.dataset.save_as(out, enforce_file_format=True)
                return out

            best, median, cpu = timed(run, args.repeat)
            rows.append((name, best, median, cpu, out.stat().st_size))

        read_s, read_median, read_cpu = timed(
            lambda: [pydicom.dcmread(p) for p in sorted(source.glob("*.dcm"))], args.repeat
        )
        ts_out = tmpdir / "totalseg.dcm"
        ts_classes = dict(class_map["total_mr"].items())

        def run_ts() -> None:
            dicom_io.save_mask_as_dicomseg(label_map, ts_classes, source, ts_out, volume.affine_ras)

        ts_s, ts_median, ts_cpu = timed(run_ts, args.repeat)
        anchor = (
            "TotalSegmentator save_mask_as_dicomseg (anchor)",
            ts_s,
            ts_median,
            ts_cpu,
            ts_out.stat().st_size,
        )

        print(
            f"{'writer (encode + write the file)':46s} {'best s':>7s} {'median s':>9s} {'cpu s':>6s} "
            f"{'size MB':>8s} {'time ratio':>11s} {'size ratio':>11s}"
        )
        for name, best, median, cpu, size in [anchor, *rows]:
            ratios = f"{best / anchor[1]:11.3f} {size / anchor[4]:11.2f}"
            print(f"{name:46s} {best:7.2f} {median:9.2f} {cpu:6.2f} {size / 1e6:8.2f} {ratios}")
        print(
            f"{'  (of the anchor: reading the source files)':46s} {read_s:7.2f} {read_median:9.2f} "
            f"{read_cpu:6.2f}"
        )
        print(
            "time ratio: best wall time / the anchor's best wall time; cpu s: best CPU time of this process"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
