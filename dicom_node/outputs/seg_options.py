"""How a SEG is encoded: the Segmentation Type and compression, the settings of the ``seg:`` configuration
section, the derived (repeatable) UIDs, and the series-level attributes built from them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

from config.routing import SegConfig
from conversion.volume import Volume
from dicom_node.outputs.errors import SegEncodingError

if TYPE_CHECKING:
    from dicom_node.outputs.seg_segments import AlgorithmInfo


class SegmentationType(StrEnum):
    """The DICOM Segmentation Type of the SEG (BINARY has the widest viewer support)."""

    BINARY = "BINARY"
    LABELMAP = "LABELMAP"


class Compression(StrEnum):
    """Pixel data compression of the SEG (all lossless)."""

    NONE = "none"
    #: JPEG 2000 lossless: allowed for BINARY and LABELMAP.
    JPEG2000 = "jpeg2000"
    #: RLE lossless: LABELMAP only (highdicom packs BINARY frames to 1 bit, which RLE cannot carry).
    RLE = "rle"


@dataclass(frozen=True)
class SegOptions:
    """Encoding settings (built from the ``seg:`` configuration section and the route's output)."""

    segmentation_type: SegmentationType = SegmentationType.BINARY
    compression: Compression = Compression.NONE
    #: Python format string; fields: ``task``, ``algorithm``, ``source``, ``stack``. Truncated to 64 chars.
    series_description: str = "{algorithm} {task} SEG"
    #: Fixed SeriesNumber, or ``None`` for the source SeriesNumber plus ``series_number_offset``.
    series_number: int | None = None
    series_number_offset: int = 1000
    manufacturer: str = "SegNode"
    manufacturer_model_name: str = "SegNode"
    software_version: str = "0"
    device_serial_number: str = "segnode"
    #: UID root of the derived UIDs (``None``: pydicom's root ``1.2.826.0.1.3680043.8.498.``).
    uid_root: str | None = None
    #: Opaque extra entropy for the UIDs (e.g. a fingerprint of the route's output settings).
    config_fingerprint: str = ""


def seg_options(
    seg: SegConfig, segmentation_type: SegmentationType, software_version: str | None = None
) -> SegOptions:
    """Encoding options from the ``seg:`` configuration section for one Segmentation Type.

    The configuration fingerprint (part of the UID derivation) covers every setting that changes the
    SEG's content, so that changing one gives new UIDs while re-running with the same settings does not.
    """
    import hashlib
    import socket

    if software_version is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            software_version = version("segnode")
        except PackageNotFoundError:
            software_version = "unknown"
    content = seg.model_dump(
        mode="json",
        exclude={"validate_with_dciodvfy", "validation_max_frames", "validation_timeout_s", "uid_root"},
    )
    fingerprint = hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    return SegOptions(
        segmentation_type=segmentation_type,
        compression=Compression(seg.compression),
        series_description=seg.series_description,
        series_number=seg.series_number,
        series_number_offset=seg.series_number_offset,
        manufacturer=seg.manufacturer,
        manufacturer_model_name="SegNode",
        software_version=software_version,
        device_serial_number=seg.device_serial_number or socket.gethostname()[:64],
        uid_root=seg.uid_root,
        config_fingerprint=fingerprint,
    )


def uid_prefix(options: SegOptions) -> str:
    """The root of the derived UIDs, ending in a dot (pydicom's root when ``seg.uid_root`` is unset).

    A prefix is required: pydicom ignores the entropy sources (random UUID UID) without one.
    """
    prefix = options.uid_root or PYDICOM_ROOT_UID
    return prefix if prefix.endswith(".") else prefix + "."


def seg_uids(volume: Volume, algorithm: AlgorithmInfo, options: SegOptions) -> tuple[str, str]:
    """The SEG's (Series Instance UID, SOP Instance UID), derived from what determines its content.

    Inputs: source Series Instance UID, the stack key, the task, algorithm name/version/parameters, the
    segmentation type, compression and the configuration fingerprint. Anything else (time, host, run) is
    left out on purpose, so that a re-run gives the same UIDs.
    """
    identity = json.dumps(
        {
            "source_series": volume.series_instance_uid,
            "stack": {str(k): str(v) for k, v in sorted(volume.stack_key.items())},
            "task": algorithm.task,
            "algorithm": algorithm.name,
            "version": algorithm.version,
            "parameters": {str(k): str(v) for k, v in sorted(algorithm.parameters.items())},
            "type": str(options.segmentation_type),
            "compression": str(options.compression),
            "config": options.config_fingerprint,
        },
        sort_keys=True,
    )
    prefix = uid_prefix(options)
    series_uid = str(generate_uid(prefix, entropy_srcs=["segnode-seg-series", identity]))
    sop_uid = str(generate_uid(prefix, entropy_srcs=["segnode-seg-instance", identity]))
    return series_uid, sop_uid


def derive_dimension_organization_uid(seg: Dataset, sop_uid: str, options: SegOptions) -> None:
    """Replace highdicom's random Dimension Organization UID by one derived from the SOP Instance UID, so
    that encoding the same series again gives the same object, not only the same instance UIDs."""
    uid = str(generate_uid(uid_prefix(options), entropy_srcs=["segnode-seg-dimension-organization", sop_uid]))
    for item in [*seg.get("DimensionOrganizationSequence", []), *seg.get("DimensionIndexSequence", [])]:
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = uid


def lo_value(text: str) -> str:
    """A value fit for a LO element: no backslash or control characters, single spaces, max 64 chars."""
    return " ".join(re.sub(r"[\\\x00-\x1f]", " ", text).split())[:64]


def content_label(task: str) -> str:
    """Content Label (CS, max 16): the task in upper case with only A-Z, 0-9 and underscore."""
    label = re.sub(r"[^A-Z0-9_]", "_", task.upper())[:16].strip("_")
    return label or "SEGMENTATION"


def series_number(volume: Volume, options: SegOptions) -> int:
    if options.series_number is not None:
        return options.series_number
    source = volume.first_header.get("SeriesNumber")
    base = int(source) if source not in (None, "") else 0
    return base + options.series_number_offset


def series_description(volume: Volume, algorithm: AlgorithmInfo, options: SegOptions) -> str:
    try:
        text = options.series_description.format(
            task=algorithm.task,
            algorithm=algorithm.name,
            source=lo_value(str(volume.first_header.get("SeriesDescription", ""))),
            stack=lo_value(volume.stack_label),
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise SegEncodingError(
            f"seg.series_description {options.series_description!r}: bad template field ({exc}); "
            "allowed: {task}, {algorithm}, {source}, {stack}"
        ) from exc
    return lo_value(text)
