"""``load_series``: the instances of one series -> its segmentable stacks as :class:`Volume` objects."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from conversion.errors import ADVICE, NotSegmentableError, Reason, summarise
from conversion.headers import (
    FrameInfo,
    SourceImage,
    frames_of,
    is_localizer,
    is_mosaic,
    read_sources,
    series_name,
)
from conversion.pixels import fill_slices
from conversion.rawheader import first_text
from conversion.stacks import (
    NonUniformPolicy,
    Stack,
    build_stack,
    describe_key,
    geometry_groups,
    plane_name,
    split_stacks,
)
from conversion.volume import LazyHeaders, SliceRef, Volume

logger = logging.getLogger(__name__)

#: When no stack of a series can be segmented, the reason reported for the series (first listed wins).
_PRIORITY = [
    Reason.SINGLE_SLICE,
    Reason.MISSING_SLICES,
    Reason.NON_UNIFORM_SPACING,
    Reason.INCONSISTENT_GEOMETRY,
    Reason.GANTRY_TILT,
]


def load_series(
    items: Iterable[str | os.PathLike[str] | Dataset | SourceImage],
    *,
    non_uniform: NonUniformPolicy = "reject",
) -> list[Volume]:
    """Build every segmentable stack of one series as a :class:`~conversion.volume.Volume`.

    Each header is read once (up to its Pixel Data element); the instances are grouped into stacks by
    geometry and by the attributes that tell stacks apart (b-value, echo, temporal position, image type,
    ...); each stack's pixels are then decoded straight into its volume.

    Parameters
    ----------
    items
        The instances of one series: file paths, pydicom datasets (with pixel data), or sources already
        read by :func:`conversion.headers.read_sources`. Any order; compressed transfer syntaxes are decoded
        through pydicom's decoders.
    non_uniform
        ``"reject"``: a stack whose slice spacing varies is not segmentable (``non_uniform_spacing``).
        ``"resample"``: it is interpolated linearly onto a uniform grid with the smallest gap as step
        (:attr:`Volume.resampled` is then set and ``slice_refs`` give the nearest source slice).

    Returns
    -------
    list of Volume
        The segmentable stacks in a stable order (geometry group, then the distinguishing attributes
        ascending), each with its ``stack_key`` and ``stack_label``. Stacks that cannot be segmented while
        others can are left out and logged.

    Raises
    ------
    NotSegmentableError
        No stack of the series can be segmented; ``reason`` is one of :class:`~conversion.errors.Reason`
        (``single_slice``, ``localizer``, ``missing_slices``, ``unreadable``, ``mixed_series``, ...) and
        the message names the series (or the file) in words a PACS administrator understands.
    ValueError
        ``non_uniform`` is neither ``"reject"`` nor ``"resample"``.
    """
    stacks, sources, name = plan_series(items, non_uniform=non_uniform)
    return [_to_volume(stack, sources, name) for stack in stacks]


def plan_series(
    items: Iterable[str | os.PathLike[str] | Dataset | SourceImage],
    *,
    non_uniform: NonUniformPolicy = "reject",
) -> tuple[list[Stack], list[SourceImage], str]:
    """Read the headers and form the stacks of a series (no pixel decoding)."""
    if non_uniform not in ("reject", "resample"):
        raise ValueError(f"non_uniform must be 'reject' or 'resample', not {non_uniform!r}")
    sources = read_sources(list(items))
    if not sources:
        raise NotSegmentableError("no instances were given", reason=Reason.NO_PIXEL_DATA)
    name = series_name(sources[0].view)
    series_uids = {first_text(s.view, 0x0020000E) or "" for s in sources}
    if len(series_uids) > 1:
        names = sorted({series_name(s.view) for s in sources})
        raise NotSegmentableError(
            f"the instances belong to {len(series_uids)} different series: {'; '.join(names)}",
            reason=Reason.MIXED_SERIES,
            series=name,
        )
    images = [i for i, s in enumerate(sources) if s.has_pixels]
    for s in sources:
        if not s.has_pixels:
            logger.info("%s: %s carries no pixel data, ignored", name, s.name)
    if not images:
        raise NotSegmentableError(
            f"{name} has no images: none of its {len(sources)} instance(s) carries pixel data "
            f"(SOP classes: {', '.join(sorted({first_text(s.view, 0x00080016) or '?' for s in sources}))})",
            reason=Reason.NO_PIXEL_DATA,
            series=name,
        )
    _check_series(sources, images, name)
    frames = _unique_frames([fr for i in images for fr in frames_of(i, sources[i])], name)
    missing = [
        fr for fr in frames if fr.position is None or fr.orientation is None or fr.pixel_spacing is None
    ]
    if missing:
        raise NotSegmentableError(
            f"{name} has {len(missing)} image(s) without Image Position/Orientation (Patient) or Pixel "
            f"Spacing (first: {sources[missing[0].source].name}): the geometry of the volume is unknown",
            reason=Reason.MISSING_GEOMETRY,
            series=name,
        )
    first = sources[images[0]].view
    modality = first_text(first, 0x00080060) or ""
    tilt = first.number(0x00181120) or 0.0  # Gantry/Detector Tilt
    groups = geometry_groups(frames)
    stacks: list[Stack] = []
    errors: list[tuple[dict[str, Any], NotSegmentableError]] = []
    for g_index, group in enumerate(groups):
        for members, key in split_stacks(group):
            full_key: dict[str, Any] = dict(key)
            if len(groups) > 1:
                full_key = {"orientation": f"{plane_name(group[0])} {g_index + 1}", **key}
            label = describe_key(full_key)
            try:
                stacks.append(
                    build_stack(
                        members,
                        full_key,
                        label,
                        series=name,
                        modality=modality,
                        gantry_tilt=tilt,
                        non_uniform=non_uniform,
                    )
                )
            except NotSegmentableError as exc:
                errors.append((full_key, exc))
    if not stacks:
        raise _series_error(errors, groups, name)
    if errors:
        logger.warning("%s: %d stack(s) left out: %s", name, len(errors), summarise(errors))
    if len(stacks) == 1 and not stacks[0].label:
        stacks[0].label = plane_name(stacks[0].frames[0])
    return stacks, sources, name


def _check_series(sources: list[SourceImage], images: list[int], name: str) -> None:
    for i in images:
        header = sources[i].view
        if is_mosaic(header):
            raise NotSegmentableError(
                f"{name} holds Siemens MOSAIC images ({sources[i].name}): several slices tiled in one image "
                "are not supported; send the series reconstructed as single slices",
                reason=Reason.UNSUPPORTED_MOSAIC,
                series=name,
            )
        if is_localizer(header):
            raise NotSegmentableError(
                f"{name} is a localizer (ImageType {'/'.join(header.text(0x00080008))}): "
                "scout images are not segmented",
                reason=Reason.LOCALIZER,
                series=name,
            )
        spp = int(header.number(0x00280002) or 1)
        photometric = first_text(header, 0x00280004) or "MONOCHROME2"
        if spp != 1 or not photometric.startswith("MONOCHROME"):
            raise NotSegmentableError(
                f"{name} has {photometric} images with {spp} samples per pixel ({sources[i].name}); "
                "only greyscale images can be segmented",
                reason=Reason.UNSUPPORTED_PIXELS,
                series=name,
            )


def _unique_frames(frames: list[FrameInfo], name: str) -> list[FrameInfo]:
    """Drop the same SOP Instance (and frame) received twice."""
    seen: set[tuple[str, int | None]] = set()
    out = []
    for fr in frames:
        key = (fr.sop_instance_uid, fr.frame)
        if key in seen:
            logger.warning("%s: SOP Instance %s frame %s given twice, kept once", name, *key)
            continue
        seen.add(key)
        out.append(fr)
    return out


def _series_error(
    failures: list[tuple[dict[str, Any], NotSegmentableError]], groups: list[list[FrameInfo]], name: str
) -> NotSegmentableError:
    errors = [e for _, e in failures]
    reasons = [e.reason for e in errors]
    if len(groups) > 1 and all(r == Reason.SINGLE_SLICE for r in reasons):
        return NotSegmentableError(
            f"{name} has {len(groups)} images in {len(groups)} different orientations: "
            "they do not form a volume",
            reason=Reason.INCONSISTENT_ORIENTATION,
            series=name,
        )
    if len(errors) == 1:
        return errors[0]
    first = min(errors, key=lambda e: _PRIORITY.index(Reason(e.reason)) if e.reason in _PRIORITY else 99)
    advice = ADVICE.get(first.reason)
    return NotSegmentableError(
        f"none of the {len(errors)} stacks of {name} can be segmented: {summarise(failures)}"
        + (f"; {advice}" if advice else ""),
        reason=Reason(first.reason),
        series=name,
    )


def _to_volume(stack: Stack, sources: list[SourceImage], name: str) -> Volume:
    ref = stack.frames[0]
    n = len(stack.frames)
    buf = np.empty((n, ref.rows, ref.columns), dtype=np.float32)
    fill_slices(buf, stack.frames, sources, series=name)
    frames = stack.frames
    if stack.resample_step is not None:
        buf, frames = _resample(buf, stack)
    header = sources[ref.source].view
    refs = tuple(
        SliceRef(
            sop_instance_uid=fr.sop_instance_uid,
            sop_class_uid=fr.sop_class_uid,
            frame_number=None if fr.frame is None else fr.frame + 1,
        )
        for fr in frames
    )
    seen: dict[int, None] = {}
    for fr in stack.frames:
        seen.setdefault(fr.source, None)
    voxels: npt.NDArray[np.float32] = buf.transpose(2, 1, 0)
    return Volume(
        voxels=voxels,
        affine=stack.affine,
        slice_refs=refs,
        frame_of_reference_uid=first_text(header, 0x00200052) or "",
        modality=first_text(header, 0x00080060) or "",
        study_instance_uid=first_text(header, 0x0020000D) or "",
        series_instance_uid=first_text(header, 0x0020000E) or "",
        # complete headers are parsed on first use (by the DICOM-SEG writer), not while loading
        source_headers=LazyHeaders([_header_of(sources[i]) for i in seen]),
        stack_key=dict(stack.key),
        stack_label=stack.label,
        resampled=stack.resample_step is not None,
    )


def _header_of(source: SourceImage) -> Callable[[], Dataset]:
    return lambda: source.header


def _resample(buf: npt.NDArray[np.float32], stack: Stack) -> tuple[npt.NDArray[np.float32], list[FrameInfo]]:
    """Linear interpolation along the normal onto a uniform grid of ``stack.resample_step``."""
    assert stack.resample_step is not None
    along = stack.along_normal - stack.along_normal[0]
    n_out = int(np.floor(along[-1] / stack.resample_step + 1e-6)) + 1
    targets = np.arange(n_out) * stack.resample_step
    upper = np.clip(np.searchsorted(along, targets, side="right"), 1, len(along) - 1)
    lower = upper - 1
    weight = ((targets - along[lower]) / (along[upper] - along[lower])).astype(np.float32)
    out = np.empty((n_out,) + buf.shape[1:], dtype=np.float32)
    for k in range(n_out):
        w = float(weight[k])
        out[k] = buf[lower[k]] * np.float32(1.0 - w) + buf[upper[k]] * np.float32(w)
    nearest = [int(lower[k] if weight[k] < 0.5 else upper[k]) for k in range(n_out)]
    logger.info(
        "resampled %d slices onto %d uniform slices of %.3g mm", len(along), n_out, stack.resample_step
    )
    return out, [stack.frames[i] for i in nearest]
