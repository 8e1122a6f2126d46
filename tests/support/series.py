"""Test series made from the real ones: their own UIDs, so that no two tests (or two runs against the same
PACS) send the same series; Part 10 helpers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from tests.support.paths import series_files


@dataclass(frozen=True)
class RenamedSeries:
    files: list[Path]
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uids: list[str]


def renamed_series(source: Path, folder: Path, tag: str) -> RenamedSeries:
    """A copy of a real series with its own Study, Series and SOP Instance UIDs (derived from the source's
    UIDs and ``tag``, so the same call gives the same UIDs); every other attribute and the pixels are the
    source's."""
    folder.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    uids: list[str] = []
    study = series = ""
    for path in series_files(source):
        ds = pydicom.dcmread(path)
        study = generate_uid(entropy_srcs=[tag, str(ds.StudyInstanceUID)])
        series = generate_uid(entropy_srcs=[tag, str(ds.SeriesInstanceUID)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[tag, str(ds.SOPInstanceUID)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        target = folder / path.name
        ds.save_as(target, enforce_file_format=True)
        out.append(target)
        uids.append(str(ds.SOPInstanceUID))
    return RenamedSeries(out, study, series, uids)


def clone_series(source: Path, count: int, folder: Path) -> list[Path]:
    """``count`` copies of one real instance as a new series: new Study/Series/SOP Instance UIDs, instance
    numbers 1..count, slice positions 1 mm apart. Pixel data and all other attributes are the source's."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(source)
    study, series = generate_uid(), generate_uid()
    origin = [float(v) for v in ds.ImagePositionPatient]
    out: list[Path] = []
    for number in range(1, count + 1):
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + number]
        path = folder / f"{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file: the bytes after the preamble and the file meta group."""
    with path.open("rb") as fp:
        pydicom.filereader.read_preamble(fp, force=False)
        pydicom.filereader._read_file_meta_info(fp)
        return fp.read()


def header(folder: Path) -> pydicom.Dataset:
    """The header (no pixels) of the first file of a series folder."""
    return pydicom.dcmread(series_files(folder)[0], stop_before_pixels=True)


def modified_copies(source: Path | list[Path], folder: Path, **attributes: Any) -> list[Path]:
    """Copies of a series (a folder or its files) with ``attributes`` set in every instance (e.g. patient
    data that must not leave the node); every other attribute, the UIDs and the pixels are the source's."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in series_files(source) if isinstance(source, Path) else source:
        ds = pydicom.dcmread(path)
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.save_as(folder / path.name, enforce_file_format=True)
        out.append(folder / path.name)
    return out


def positions_along_normal(headers: list[pydicom.Dataset]) -> list[float]:
    """Each header's Image Position (Patient) along the slice normal of the first header's orientation."""
    normal = np.cross(*np.reshape([float(v) for v in headers[0].ImageOrientationPatient], (2, 3)))
    return [float(np.dot([float(v) for v in h.ImagePositionPatient], normal)) for h in headers]


def header_voxel_ml(files: list[Path]) -> float:
    """The voxel volume in ml from the source headers alone: Pixel Spacing x the distance between
    neighbouring slice positions along the slice normal (the slices must be evenly spaced)."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    spacing = [float(v) for v in headers[0].PixelSpacing]
    along = sorted(positions_along_normal(headers))
    steps = np.diff(along)
    assert len(steps) and np.allclose(steps, steps[0], rtol=1e-4), f"slices not evenly spaced: {steps}"
    return spacing[0] * spacing[1] * float(steps[0]) / 1000.0
