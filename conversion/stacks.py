"""From the frames of a series to stacks: grouping, slice order and the checks a volume needs.

Frames are first grouped by geometry (matrix, orientation, pixel spacing). A group whose frames all lie at
distinct positions is one stack. When positions repeat, the group is split by the attribute that best tells
the repeats apart (b-value, echo, temporal position, ImageType, acquisition, cardiac phase, ...), recursively,
until every stack has one frame per position. Slices are ordered by their position along the slice normal
``row x column``, never by InstanceNumber.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from conversion.errors import NotSegmentableError, Reason
from conversion.headers import FrameInfo

logger = logging.getLogger(__name__)

#: Orientation cosines that differ by less than this belong to the same orientation.
ORIENTATION_TOLERANCE = 1e-3
#: Positions closer than this (mm, along the normal) are the same position.
POSITION_TOLERANCE = 0.01
#: Slice gaps within max(SPACING_ABS_TOLERANCE, SPACING_REL_TOLERANCE * step) of the step are uniform.
SPACING_ABS_TOLERANCE = 0.02
SPACING_REL_TOLERANCE = 0.01
#: In-plane drift of slice positions (mm per mm along the normal) above which a stack is sheared.
SHEAR_TOLERANCE = 1e-3

NonUniformPolicy = Literal["reject", "resample"]

#: Attributes that can tell stacks at the same positions apart, in order of preference.
SPLIT_ATTRIBUTES = (
    "image_type",
    "b_value",
    "echo_number",
    "echo_time",
    "temporal_position",
    "stack_id",
    "acquisition_number",
    "cardiac_phase",
    "repetition",
)


@dataclass
class Stack:
    """Frames of one stack in slice order, with its geometry."""

    frames: list[FrameInfo]
    key: dict[str, Any]
    label: str
    affine: npt.NDArray[np.float64]
    #: Positions of the frames along the slice normal (mm), increasing.
    along_normal: npt.NDArray[np.float64]
    #: Set when the spacing is not uniform and the policy asks to resample: the target step in mm.
    resample_step: float | None = None
    notes: list[str] = field(default_factory=list)


def geometry_groups(frames: list[FrameInfo]) -> list[list[FrameInfo]]:
    """Group frames by matrix, orientation and pixel spacing (within tolerances), in input order."""
    groups: list[list[FrameInfo]] = []
    for fr in frames:
        assert fr.orientation is not None and fr.pixel_spacing is not None
        for group in groups:
            ref = group[0]
            assert ref.orientation is not None and ref.pixel_spacing is not None
            if (fr.rows, fr.columns) == (ref.rows, ref.columns) and (
                # exact equality first: cheap, and the common case within a stack
                (
                    fr.pixel_spacing == ref.pixel_spacing
                    and fr.orientation.tobytes() == ref.orientation.tobytes()
                )
                or (
                    np.max(np.abs(fr.orientation - ref.orientation)) < ORIENTATION_TOLERANCE
                    and np.allclose(fr.pixel_spacing, ref.pixel_spacing, rtol=1e-4, atol=1e-4)
                )
            ):
                group.append(fr)
                break
        else:
            groups.append([fr])
    return groups


def normal_of(frame: FrameInfo) -> npt.NDArray[np.float64]:
    assert frame.orientation is not None
    row, col = frame.orientation[:3], frame.orientation[3:]
    n = np.cross(row, col)
    out: npt.NDArray[np.float64] = n / np.linalg.norm(n)
    return out


def _position_keys(frames: list[FrameInfo], normal: npt.NDArray[np.float64]) -> list[int]:
    """A key per frame, equal for frames within POSITION_TOLERANCE of each other along the normal."""
    positions = np.array([f.position if f.position is not None else (0.0, 0.0, 0.0) for f in frames])
    along = [
        0.0 if f.position is None else a for f, a in zip(frames, (positions @ normal).tolist(), strict=True)
    ]
    keys = [0] * len(frames)
    cluster, previous = 0, None
    for i in sorted(range(len(frames)), key=along.__getitem__):
        if previous is not None and along[i] - previous > POSITION_TOLERANCE:
            cluster += 1
        keys[i], previous = cluster, along[i]
    return keys


def _duplicates(frames: list[FrameInfo], normal: npt.NDArray[np.float64]) -> int:
    keys = _position_keys(frames, normal)
    return len(keys) - len(set(keys))


def _rank_within_position(
    frames: list[FrameInfo], normal: npt.NDArray[np.float64], order: Callable[[FrameInfo], Any]
) -> list[int]:
    by_pos: dict[int, list[int]] = defaultdict(list)
    for idx, key in enumerate(_position_keys(frames, normal)):
        by_pos[key].append(idx)
    ranks = [0] * len(frames)
    for members in by_pos.values():
        for rank, idx in enumerate(sorted(members, key=lambda i: order(frames[i]))):
            ranks[idx] = rank + 1
    return ranks


def _values(attr: str, frames: list[FrameInfo], normal: npt.NDArray[np.float64]) -> list[Any] | None:
    if attr == "cardiac_phase":
        if any("trigger_time" not in f.attrs for f in frames):
            return None
        return _rank_within_position(frames, normal, lambda f: f.attrs["trigger_time"])
    if attr == "repetition":
        return _rank_within_position(
            frames, normal, lambda f: (f.instance_number, f.source, -1 if f.frame is None else f.frame)
        )
    return [f.attrs.get(attr) for f in frames]


def _sort_key(value: Any) -> tuple[bool, str, Any]:
    if value is None:
        return (True, "", 0)
    if isinstance(value, int | float):
        return (False, "", float(value))
    return (False, str(value), 0)


def split_stacks(frames: list[FrameInfo]) -> list[tuple[list[FrameInfo], dict[str, Any]]]:
    """Split one geometry group into stacks with one frame per position, with their distinguishing keys."""
    normal = normal_of(frames[0])
    return _split(frames, list(SPLIT_ATTRIBUTES), {}, normal)


def _split(
    frames: list[FrameInfo], remaining: list[str], key: dict[str, Any], normal: npt.NDArray[np.float64]
) -> list[tuple[list[FrameInfo], dict[str, Any]]]:
    dups = _duplicates(frames, normal)
    if dups == 0:
        return [(frames, key)]
    best: tuple[int, int, int] | None = None
    best_parts: dict[Any, list[FrameInfo]] = {}
    best_attr = ""
    for order, attr in enumerate(remaining):
        values = _values(attr, frames, normal)
        if values is None or len(set(values)) < 2:
            continue
        parts: dict[Any, list[FrameInfo]] = defaultdict(list)
        for fr, value in zip(frames, values, strict=True):
            parts[value].append(fr)
        score = sum(_duplicates(p, normal) for p in parts.values())
        if score >= dups:
            continue
        cand = (score, len(parts), order)
        if best is None or cand < best:
            best, best_parts, best_attr = cand, parts, attr
    if best is None:
        # Unreachable in practice ("repetition" always separates repeats); if it happens the group stays
        # whole and build_stack rejects it for images at the same position.
        return [(frames, key)]
    rest = [a for a in remaining if a != best_attr]
    out: list[tuple[list[FrameInfo], dict[str, Any]]] = []
    for value in sorted(best_parts, key=_sort_key):
        out.extend(_split(best_parts[value], rest, {**key, best_attr: value}, normal))
    return out


def describe_key(key: dict[str, Any]) -> str:
    """A short human label for a stack key, e.g. ``b=800, echo 2``."""
    words = {
        "b_value": lambda v: f"b={v}",
        "echo_number": lambda v: f"echo {v}",
        "echo_time": lambda v: f"TE={v}",
        "temporal_position": lambda v: f"temporal position {v}",
        "stack_id": lambda v: f"stack {v}",
        "acquisition_number": lambda v: f"acquisition {v}",
        "cardiac_phase": lambda v: f"cardiac phase {v}",
        "repetition": lambda v: f"repetition {v}",
        "image_type": lambda v: f"ImageType {v}",
        "orientation": lambda v: str(v),
    }
    return ", ".join(words.get(k, lambda v, k=k: f"{k}={v}")(v) for k, v in key.items())


def plane_name(frame: FrameInfo) -> str:
    """axial / coronal / sagittal by the dominant component of the normal (oblique planes included)."""
    n = np.abs(normal_of(frame))
    return ("sagittal", "coronal", "axial")[int(np.argmax(n))]


def build_stack(
    frames: list[FrameInfo],
    key: dict[str, Any],
    label: str,
    *,
    series: str,
    modality: str,
    gantry_tilt: float,
    non_uniform: NonUniformPolicy,
) -> Stack:
    """Order a stack's frames along the normal, check it and compute its affine (LPS)."""
    where = f"{series}, stack {label}" if label else series
    if len(frames) < 2:
        raise NotSegmentableError(
            f"{where} has a single image: there is no volume to segment",
            reason=Reason.SINGLE_SLICE,
            series=series,
            stack_label=label,
        )
    ref = frames[0]
    assert ref.orientation is not None and ref.pixel_spacing is not None
    row, col = ref.orientation[:3], ref.orientation[3:]
    normal = normal_of(ref)
    positions = np.array([f.position for f in frames], dtype=np.float64)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    frames = [frames[i] for i in order]
    positions, along = positions[order], along[order]
    gaps = np.diff(along)
    extent = float(along[-1] - along[0])
    if np.any(gaps < POSITION_TOLERANCE):
        raise NotSegmentableError(
            f"{where} has several different images at the same slice position",
            reason=Reason.INCONSISTENT_GEOMETRY,
            series=series,
            stack_label=label,
        )
    _check_in_plane(where, positions, row, col, extent, modality, gantry_tilt, series=series, label=label)
    resample_step = _resample_step(where, gaps, len(frames), non_uniform, series=series, label=label)
    affine = np.eye(4)
    affine[:3, 0] = row * ref.pixel_spacing[1]
    affine[:3, 1] = col * ref.pixel_spacing[0]
    affine[:3, 2] = (positions[-1] - positions[0]) / (len(frames) - 1)
    affine[:3, 3] = positions[0]
    if resample_step is not None:
        affine[:3, 2] = (positions[-1] - positions[0]) / extent * resample_step
    return Stack(
        frames=frames, key=key, label=label, affine=affine, along_normal=along, resample_step=resample_step
    )


def _check_in_plane(
    where: str,
    positions: npt.NDArray[np.float64],
    row: npt.NDArray[np.float64],
    col: npt.NDArray[np.float64],
    extent: float,
    modality: str,
    gantry_tilt: float,
    *,
    series: str,
    label: str,
) -> None:
    """Refuse a stack whose slice positions drift in-plane (sheared), or a tilted CT."""
    drift = positions - positions[0]
    inplane = np.hypot(drift @ row, drift @ col)
    if modality == "CT" and abs(gantry_tilt) > 1e-3:
        raise NotSegmentableError(
            f"{where} was acquired with a gantry tilt of {gantry_tilt} degrees; tilted CT is not supported",
            reason=Reason.GANTRY_TILT,
            series=series,
            stack_label=label,
        )
    if float(np.max(inplane)) > max(0.01, SHEAR_TOLERANCE * extent):
        angle = float(np.degrees(np.arctan2(float(np.max(inplane)), extent)))
        if modality == "CT":
            raise NotSegmentableError(
                f"{where} has slices shifted in-plane by up to {angle:.2f} degrees (gantry tilt)",
                reason=Reason.GANTRY_TILT,
                series=series,
                stack_label=label,
            )
        raise NotSegmentableError(
            f"{where} has slice positions that drift in-plane by {angle:.2f} degrees from the slice normal",
            reason=Reason.INCONSISTENT_GEOMETRY,
            series=series,
            stack_label=label,
        )


def _resample_step(
    where: str,
    gaps: npt.NDArray[np.float64],
    n_frames: int,
    non_uniform: NonUniformPolicy,
    *,
    series: str,
    label: str,
) -> float | None:
    """``None`` for uniform slice gaps; the smallest gap where they differ and ``non_uniform`` allows
    resampling. Refuses gaps that are multiples of the step (missing slices) and, under ``reject``,
    non-uniform ones."""
    step = float(np.median(gaps))
    tol = max(SPACING_ABS_TOLERANCE, SPACING_REL_TOLERANCE * step)
    if float(np.max(np.abs(gaps - step))) <= tol:
        return None
    ratios = gaps / step
    multiples = np.round(ratios)
    if np.all(np.abs(ratios - multiples) * step <= tol) and np.all(multiples >= 1):
        missing = int(np.sum(multiples - 1))
        raise NotSegmentableError(
            f"{where} is missing {missing} slice(s): {n_frames} slices with a step of {step:.3g} mm "
            f"but gaps of up to {float(np.max(gaps)):.3g} mm (send the complete series again)",
            reason=Reason.MISSING_SLICES,
            series=series,
            stack_label=label,
        )
    if non_uniform == "reject":
        raise NotSegmentableError(
            f"{where} has non-uniform slice spacing ({float(np.min(gaps)):.3g} to "
            f"{float(np.max(gaps)):.3g} mm); set conversion to resample to accept it",
            reason=Reason.NON_UNIFORM_SPACING,
            series=series,
            stack_label=label,
        )
    return float(np.min(gaps))
