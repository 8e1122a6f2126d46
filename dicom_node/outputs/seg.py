"""DICOM Segmentation (SEG) encoding: one multi-segment SEG per source series, stack and task.

The input is a :class:`conversion.volume.Volume` (one stack with exact geometry and per-slice source
references) and a label map on the same grid (``label_map.shape == volume.shape``, axes ``(i, j, k)`` =
``(column, row, slice)``). The SEG's frames lie on the source planes and reference the source instances
(and, for multi-frame sources, the source frames) they were derived from.

highdicom wants ``(frames, rows, columns)`` arrays, so slice ``k`` of the volume becomes
``label_map[:, :, k].T`` and its plane position is the Image Position (Patient) of the source image or
frame ``volume.slice_refs[k]``, copied from the source headers (never recomputed from the affine, so that
highdicom matches every SEG frame to its source exactly).

Segment numbers are consecutive from 1 in increasing order of the model labels present in the label map;
:attr:`EncodedSeg.segment_labels` maps them back. UIDs are derived deterministically (see :func:`seg_uids`)
so that encoding the same series with the same model and settings again gives the same Series and SOP
Instance UIDs: a re-run replaces the earlier SEG in the PACS instead of adding a second one.

highdicom is the encoder of record. For BINARY SEGs it builds the object around a one-voxel-per-plane
skeleton and :mod:`dicom_node.outputs.seg_frames` adds the frames in bulk (tested equal to highdicom's own
constructor): about 1 s instead of 9 s for 50 segments on 512x512x120 (``tests/bench/bench_seg.py``).

This module is the SEG encoder's entry point (:func:`encode_seg`) and exports what a caller needs with it;
the parts live in :mod:`~dicom_node.outputs.seg_options` (settings, UIDs, series attributes),
:mod:`~dicom_node.outputs.seg_segments` (segment descriptions), :mod:`~dicom_node.outputs.seg_sources`
(source geometry and references) and :mod:`~dicom_node.outputs.seg_frames` (bulk BINARY frames). Written
SEGs are validated by :mod:`dicom_node.outputs.validation`.

highdicom is imported lazily (inside the functions) so that importing this module stays cheap.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from conversion.volume import Volume
from dicom_node.outputs import seg_frames
from dicom_node.outputs.attribute_values import Correction
from dicom_node.outputs.errors import EmptySegmentationError, SegEncodingError
from dicom_node.outputs.seg_options import (
    Compression,
    SegmentationType,
    SegOptions,
    content_label,
    derive_dimension_organization_uid,
    lo_value,
    seg_options,
    seg_uids,
    series_description,
    series_number,
)
from dicom_node.outputs.seg_segments import (
    AlgorithmInfo,
    CodeTriple,
    SegmentSpec,
    segment_descriptions,
    segments_from_catalog,
)
from dicom_node.outputs.seg_sources import (
    check_geometry,
    check_references,
    frame_position,
    orientation_and_spacing,
    restrict_frame_references,
    sanitized_volume,
    slice_thickness,
    source_for_highdicom,
)

if TYPE_CHECKING:
    import highdicom as hd

__all__ = [
    "AlgorithmInfo",
    "CodeTriple",
    "Compression",
    "EmptySegmentationError",
    "EncodedSeg",
    "SegEncodingError",
    "SegOptions",
    "SegmentSpec",
    "SegmentationType",
    "encode_seg",
    "seg_options",
    "seg_uids",
    "segments_from_catalog",
]

logger = logging.getLogger(__name__)

#: Transfer syntax UIDs of the compression choices.
_TS_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_TRANSFER_SYNTAXES = {
    Compression.NONE: _TS_EXPLICIT_LE,
    Compression.JPEG2000: "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    Compression.RLE: "1.2.840.10008.1.2.5",  # RLE lossless
}


@dataclass(frozen=True)
class EncodedSeg:
    """A SEG ready to be written or sent."""

    dataset: Dataset
    series_instance_uid: str
    sop_instance_uid: str
    #: SEG segment number -> model label.
    segment_labels: Mapping[int, int]
    number_of_frames: int
    #: Corrections of the source attributes the SEG copies (keyword and rule, never the value).
    corrections: tuple[Correction, ...] = ()


@dataclass(frozen=True)
class _Planes:
    """The label map as highdicom frames and where its labels lie on the source planes."""

    #: Model labels, ``(slice, row, column)``.
    frames: npt.NDArray[Any]
    #: Voxel count (and row extent) of every label on every plane.
    census: seg_frames.PlaneCensus
    #: The labels present, in increasing order: segment ``n`` is label ``present[n - 1]``.
    present: list[int]
    #: Image Position (Patient) of every slice, from the source headers.
    positions: npt.NDArray[np.float64]
    #: Image Orientation (Patient) and Pixel Spacing (row, column) from the Volume affine.
    orientation: list[float]
    pixel_spacing: list[float]
    slice_thickness: float


def _check_label_map(volume: Volume, label_map: npt.NDArray[np.integer[Any]], where: str) -> None:
    """The label map must lie on the volume's grid, hold non-negative integers, and the volume's slices must
    be the source images."""
    if label_map.shape != volume.shape:
        raise SegEncodingError(f"{where}: label map shape {label_map.shape} != volume shape {volume.shape}")
    if not np.issubdtype(label_map.dtype, np.integer):
        raise SegEncodingError(f"{where}: label map must hold integers, not {label_map.dtype}")
    if len(volume.slice_refs) != volume.shape[2]:
        raise SegEncodingError(
            f"{where}: {len(volume.slice_refs)} slice references for {volume.shape[2]} slices"
        )
    if getattr(volume, "resampled", False):
        raise SegEncodingError(
            f"{where}: the volume was resampled onto a uniform grid; its slices do not lie on the source "
            "images (resample the label map back to the source slices first)",
            reason="resampled_volume",
        )
    signed = np.issubdtype(label_map.dtype, np.signedinteger)
    lowest = int(label_map.min()) if signed and label_map.size else 0
    if lowest < 0:
        raise SegEncodingError(f"{where}: negative label {lowest} in the label map")


def _labels_present(
    census: seg_frames.PlaneCensus, segments: Mapping[int, SegmentSpec], task: str, where: str
) -> list[int]:
    """The labels found in the label map, each with a segment description."""
    present = [int(v) for v in np.flatnonzero(census.counts.sum(axis=0)) if v != 0]
    if not present:
        raise EmptySegmentationError(f"{where}: the label map is empty (no structure found)")
    missing = [v for v in present if v not in segments]
    if missing:
        raise SegEncodingError(f"{where}: labels {missing} of task {task!r} have no segment description")
    return present


def _source_positions(volume: Volume, where: str) -> npt.NDArray[np.float64]:
    """The plane position of every slice from its source header, checked against the Volume affine."""
    frames_of_reference = {str(h.get("FrameOfReferenceUID", "")) for h in volume.source_headers}
    if frames_of_reference != {volume.frame_of_reference_uid}:
        raise SegEncodingError(
            f"{where}: the source instances carry {len(frames_of_reference)} Frame of Reference UIDs; "
            "one SEG needs all its source images in one Frame of Reference",
            reason="inconsistent_frame_of_reference",
        )
    headers = {str(h.SOPInstanceUID): h for h in volume.source_headers}
    positions = []
    for ref in volume.slice_refs:
        header = headers.get(ref.sop_instance_uid)
        if header is None:
            raise SegEncodingError(
                f"{where}: slice references instance {ref.sop_instance_uid} without a header"
            )
        positions.append(frame_position(header, ref))
    position_array = np.asarray(positions, dtype=np.float64)
    check_geometry(volume, position_array)
    return position_array


def _highdicom_seg(
    volume: Volume,
    planes: _Planes,
    descriptions: Sequence[hd.seg.SegmentDescription],
    algorithm: AlgorithmInfo,
    options: SegOptions,
    uids: tuple[str, str],
    *,
    fast: bool,
) -> Dataset:
    """highdicom's Segmentation of the planes: every frame, or (``fast``) the one-voxel-per-plane skeleton
    that :func:`seg_frames.assemble_binary_frames` fills."""
    import highdicom as hd

    if fast:
        nonempty: npt.NDArray[np.bool_] = np.asarray(planes.census.counts[:, 1:].any(axis=1))
        pixel_array = seg_frames.skeleton_pixel_array(nonempty, *planes.frames.shape[1:])
        descriptions = descriptions[:1]
    else:
        present = planes.present
        lut = np.zeros(present[-1] + 1, dtype=np.uint8 if len(present) < 256 else np.uint16)
        lut[present] = np.arange(1, len(present) + 1, dtype=lut.dtype)
        pixel_array = lut[planes.frames]
    content_description = f"{algorithm.name} {algorithm.task}"
    if volume.stack_label:
        content_description += f" ({volume.stack_label})"
    seg: Dataset = hd.seg.Segmentation(
        source_images=[source_for_highdicom(h) for h in volume.source_headers],
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues(str(options.segmentation_type)),
        segment_descriptions=descriptions,
        series_instance_uid=uids[0],
        series_number=series_number(volume, options),
        sop_instance_uid=uids[1],
        instance_number=1,
        manufacturer=options.manufacturer,
        manufacturer_model_name=options.manufacturer_model_name,
        software_versions=options.software_version,
        device_serial_number=options.device_serial_number,
        content_description=lo_value(content_description),
        content_label=content_label(algorithm.task),
        transfer_syntax_uid=_TRANSFER_SYNTAXES[options.compression],
        pixel_measures=hd.PixelMeasuresSequence(
            pixel_spacing=planes.pixel_spacing, slice_thickness=planes.slice_thickness
        ),
        plane_orientation=hd.PlaneOrientationSequence(
            coordinate_system=hd.CoordinateSystemNames.PATIENT, image_orientation=planes.orientation
        ),
        plane_positions=[
            hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, p) for p in planes.positions
        ],
        omit_empty_frames=True,
    )
    return seg


def _where(volume: Volume) -> str:
    return f"series {volume.series_instance_uid}" + (
        f" stack {volume.stack_label}" if volume.stack_label else ""
    )


def _fast_path(options: SegOptions, frames: npt.NDArray[Any], highdicom_frames: bool) -> bool:
    """Whether the frames are added in bulk (:mod:`seg_frames`): BINARY SEGs whose frames can be cut apart
    (JPEG 2000, or rows of whole bytes)."""
    return (
        not highdicom_frames
        and options.segmentation_type is SegmentationType.BINARY
        and (
            options.compression is Compression.JPEG2000 or frames.shape[2] % 8 == 0  # rows of whole bytes
        )
    )


def _encode_planes(
    volume: Volume,
    planes: _Planes,
    segments: Mapping[int, SegmentSpec],
    algorithm: AlgorithmInfo,
    options: SegOptions,
    uids: tuple[str, str],
    fast: bool,
) -> tuple[Dataset, list[hd.seg.SegmentDescription]]:
    """highdicom's SEG of the planes (the skeleton when ``fast``) and the segment descriptions;
    :class:`SegEncodingError` when highdicom refuses the inputs."""
    try:
        with warnings.catch_warnings():
            # highdicom warns about one-component person names copied from the source and puts the
            # name in the message: that would put patient names in the log.
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
            descriptions = segment_descriptions(planes.present, segments, algorithm)
            seg = _highdicom_seg(volume, planes, descriptions, algorithm, options, uids, fast=fast)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise SegEncodingError(f"{_where(volume)}: highdicom refused the segmentation: {exc}") from exc
    return seg, list(descriptions)


def _prepare_planes(
    volume: Volume,
    label_map: npt.NDArray[np.integer[Any]],
    segments: Mapping[int, SegmentSpec],
    task: str,
    options: SegOptions,
) -> tuple[Volume, _Planes, tuple[Correction, ...]]:
    """The checked inputs of :func:`encode_seg`: the volume with its copied attributes sanitised, the label
    map as planes on the source geometry, and the corrections made (raises as :func:`encode_seg` says)."""
    where = _where(volume)
    _check_label_map(volume, label_map, where)
    # Frames (slice, row, column) and the voxel count of every label on every plane, in linear time
    # (np.unique sorts the voxels: seconds on a 512x512x100 map).
    label_frames = seg_frames.frames_of(label_map)
    census = seg_frames.plane_label_census(label_frames)
    present = _labels_present(census, segments, task, where)
    if options.segmentation_type is SegmentationType.BINARY and options.compression is Compression.RLE:
        raise SegEncodingError(f"{where}: RLE compression is only possible for LABELMAP SEGs (use jpeg2000)")
    positions = _source_positions(volume, where)
    volume, corrections = sanitized_volume(volume, where)
    orientation, pixel_spacing = orientation_and_spacing(volume)
    planes = _Planes(
        label_frames, census, present, positions, orientation, pixel_spacing, slice_thickness(volume)
    )
    return volume, planes, corrections


def encode_seg(
    volume: Volume,
    label_map: npt.NDArray[np.integer[Any]],
    segments: Mapping[int, SegmentSpec],
    algorithm: AlgorithmInfo,
    options: SegOptions | None = None,
    *,
    highdicom_frames: bool = False,
) -> EncodedSeg:
    """Encode ``label_map`` (same shape as ``volume.voxels``, 0 = background) as one DICOM SEG.

    BINARY SEGs get their frames from :mod:`dicom_node.outputs.seg_frames` (highdicom builds the SEG
    around a one-voxel-per-plane skeleton; the frames are packed and their functional groups encoded in
    bulk): the same object as highdicom's constructor gives, in a fraction of the time. LABELMAP SEGs, and
    BINARY SEGs with ``highdicom_frames=True``, get every frame from highdicom's constructor.

    Parameters
    ----------
    volume: conversion.volume.Volume
        The stack the labels were computed on, with its source headers and per-slice source references
        (not resampled: every slice must lie on a source image or frame).
    label_map: numpy.ndarray
        Non-negative integer labels on the volume's grid, axes ``(column, row, slice)``; 0 is background.
    segments: Mapping[int, SegmentSpec]
        Description of every label that may occur (e.g. :func:`segments_from_catalog`).
    algorithm: AlgorithmInfo
        What produced the labels (Algorithm Identification; part of the UID derivation).
    options: SegOptions | None, optional
        Segmentation Type, compression, series attributes and UID root (:func:`seg_options` builds them
        from the configuration); the defaults when ``None``.
    highdicom_frames: bool, optional
        Let highdicom's constructor build every frame of a BINARY SEG too (the reference the tests compare
        the fast path with).

    Returns
    -------
    EncodedSeg
        The dataset, UIDs (derived from what determines the content: :func:`seg_uids`), segment number ->
        label, number of frames, corrections of the copied source attributes (:func:`sanitized_volume`).

    Raises
    ------
    EmptySegmentationError
        No voxel is labelled: there is nothing to encode.
    SegEncodingError
        The label map does not fit the volume (shape, dtype, negative labels, resampled volume), a label
        has no description, BINARY is asked with RLE, the source headers disagree with the Volume's
        geometry or Frame of Reference, a frame would reference no source image, or highdicom refuses the
        inputs.
    SourceAttributeError
        A Type 1 UID the SEG carries unchanged is missing or invalid in the source.
    """
    options = options or SegOptions()
    where = _where(volume)
    volume, planes, corrections = _prepare_planes(volume, label_map, segments, algorithm.task, options)
    fast = _fast_path(options, planes.frames, highdicom_frames)
    series_uid, sop_uid = seg_uids(volume, algorithm, options)
    seg, descriptions = _encode_planes(
        volume, planes, segments, algorithm, options, (series_uid, sop_uid), fast
    )
    seg = _finish(seg, volume, planes, descriptions, algorithm, options, fast)
    number_of_frames = int(seg.NumberOfFrames)
    logger.info(
        "encoded %s SEG for %s: %d segments, %d frames, series %s",
        options.segmentation_type,
        where,
        len(planes.present),
        number_of_frames,
        series_uid,
    )
    return EncodedSeg(
        dataset=seg,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        segment_labels={n: label for n, label in enumerate(planes.present, start=1)},
        number_of_frames=number_of_frames,
        corrections=corrections,
    )


def _finish(
    seg: Dataset,
    volume: Volume,
    planes: _Planes,
    descriptions: Sequence[hd.seg.SegmentDescription],
    algorithm: AlgorithmInfo,
    options: SegOptions,
    fast: bool,
) -> Dataset:
    """What the SEG needs after highdicom's constructor: series description, repeatable Dimension
    Organization UID, undefined-length encapsulated pixel data, exact source references, and (``fast``) the
    frames."""
    where = _where(volume)
    seg.SeriesDescription = series_description(volume, algorithm, options)
    derive_dimension_organization_uid(seg, str(seg.SOPInstanceUID), options)
    if _TRANSFER_SYNTAXES[options.compression] != _TS_EXPLICIT_LE and "PixelData" in seg:
        # Encapsulated Pixel Data must have undefined length (PS3.5 A.4). pydicom fixes this when writing
        # a file, not when a dataset is encoded for the network (C-STORE): DCMTK aborts on it.
        seg["PixelData"].is_undefined_length = True
    # In the fast path these work on the skeleton's frames, one per plane, whose references every frame of
    # that plane shares.
    if any("PerFrameFunctionalGroupsSequence" in h and "NumberOfFrames" in h for h in volume.source_headers):
        restrict_frame_references(seg, volume, planes.positions)
    check_references(seg, where)
    if not fast:
        return seg
    try:
        return seg_frames.assemble_binary_frames(
            seg, planes.frames, planes.census, planes.present, planes.positions, descriptions
        )
    except seg_frames.FrameAssemblyError as exc:
        import highdicom as hd

        raise SegEncodingError(f"{where}: {exc} (highdicom {hd.__version__})") from exc
