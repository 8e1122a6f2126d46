"""Validation of written DICOM objects with dicom3tools' ``dciodvfy`` (strict when writing: a SEG with
an error is not sent)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicom_node.outputs.errors import SegEncodingError


class SegValidationError(SegEncodingError):
    """A written SEG does not pass validation (``dciodvfy`` reported errors)."""

    reason = "seg_invalid"

    def __init__(self, message: str, errors: Sequence[str]) -> None:
        super().__init__(message)
        self.errors = list(errors)


#: SOP Class UID of Label Map Segmentation Storage (DICOM 2024, Supplement 243).
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"


#: dciodvfy errors that come from a validator older than the Label Map Segmentation IOD, not from the
#: object: dicom3tools 1.00~20220618 (Debian 12) has no definition of the IOD ("Information Object Not
#: found") and applies the BINARY/FRACTIONAL rule that segment numbers start at 1, whereas a LABELMAP SEG
#: describes the background as segment 0. They are tolerated for LABELMAP SEGs only; any other error fails.
LABELMAP_VALIDATOR_GAPS: tuple[re.Pattern[str], ...] = (
    re.compile(r"^Error - Information Object Not found$"),
    re.compile(
        r"^Error - SegmentNumber not monotonically increasing from one by one - have SegmentSequence "
        r"item number 1 \(from one\) with SegmentNumber of 0$"
    ),
)


@dataclass(frozen=True)
class DciodvfyReport:
    """What ``dciodvfy`` said about a file that passed."""

    warnings: list[str]
    #: Error lines tolerated because the validator predates the IOD (see ``LABELMAP_VALIDATOR_GAPS``).
    validator_gaps: list[str]
    #: ``None`` when dciodvfy checked the whole file, else the number of frames of the witness it checked.
    witness_frames: int | None = None


def validate_with_dciodvfy(
    path: Path,
    executable: str = "dciodvfy",
    *,
    max_frames: int | None = None,
    timeout_s: float = 300.0,
) -> DciodvfyReport:
    """Run dicom3tools' ``dciodvfy`` on a SEG file; raise :class:`SegValidationError` on any ``Error`` line.

    Warnings are returned (the caller logs or records them); for LABELMAP SEGs the errors listed in
    ``LABELMAP_VALIDATOR_GAPS`` are returned as ``validator_gaps`` instead of failing.

    dciodvfy's time grows faster than the number of frames (dicom3tools 1.00~20220618: about 3 s of CPU for
    950 frames, 12 s for 1,500, about a minute for the 2,550 frames of a 50-segment BINARY SEG on 120
    slices). With ``max_frames``, a SEG with more frames is checked through a *witness*: the same object
    with only some of its frames (the first and last frame of every segment, then frames spread evenly up to
    ``max_frames``) and their per-frame functional groups. Every other attribute, sequence and module is
    checked as written; the frames left out were made by the same code as those kept (see
    ``dicom_node.outputs.seg_frames``). ``None`` (the default) checks the whole file.
    """
    import tempfile

    import pydicom

    binary = shutil.which(executable)
    if binary is None:
        raise SegEncodingError(
            f"{executable} not found on PATH (install the dicom3tools package)", reason="no_validator"
        )
    with tempfile.TemporaryDirectory(prefix="segnode-witness-") as folder:
        witness = None if max_frames is None else _witness(path, max_frames, Path(folder))
        checked = path if witness is None else witness[0]
        try:
            # errors="replace": dciodvfy quotes values as they are stored (e.g. a Latin-1 name).
            proc = subprocess.run(
                [binary, str(checked)],
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise SegEncodingError(
                f"{path.name}: dciodvfy did not finish within {timeout_s:g} s", reason="validator_timeout"
            ) from exc
    lines = [redact(line.strip()) for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    gaps: list[str] = []
    if errors:
        sop_class = str(
            pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).SOPClassUID
        )
        if sop_class == LABEL_MAP_SEGMENTATION_STORAGE:
            gaps = [e for e in errors if any(p.match(e) for p in LABELMAP_VALIDATOR_GAPS)]
            errors = [e for e in errors if e not in gaps]
    what = path.name if witness is None else f"{path.name} (witness of {witness[1]} of its frames)"
    if errors:
        raise SegValidationError(f"{what}: dciodvfy reported {len(errors)} error(s): {errors[0]}", errors)
    return DciodvfyReport(
        warnings=warnings, validator_gaps=gaps, witness_frames=None if witness is None else witness[1]
    )


#: Values that dciodvfy quotes in its messages: ``PN [1] = <Doe^John>``, ``enumerated value <MALE>``,
#: ``Character invalid for this VR = 'a' (0x61)``.
_QUOTED_VALUES = (
    (re.compile(r"(\[\d+\] = )<[^>]*>"), r"\1<...>"),
    (re.compile(r"(enumerated value )<[^>]*>"), r"\1<...>"),
    (re.compile(r"= '[^']*' \((0x[0-9a-fA-F]+|\d+)\)"), "= <...>"),
)


def redact(line: str) -> str:
    """A dciodvfy message without the values it quotes (they may be a patient's name or birth date)."""
    for pattern, replacement in _QUOTED_VALUES:
        line = pattern.sub(replacement, line)
    return line


_ELEMENT = re.compile(r"^Error - (?P<problem>.*?) Element=<(?P<keyword>\w+)>")
_TAG = re.compile(r"^Error - (?P<problem>[^-]*?) - \(0x(?P<group>[0-9a-f]{4}),0x(?P<element>[0-9a-f]{4})\)")
_NAMED = re.compile(r"^Error - (?P<problem>.*?) of attribute <(?P<name>[^>]+)>")
#: Lines that only sum up the others.
_SUMMARIES = ("Error - Dicom dataset contains invalid data values for Value Representations",)


def reported_attributes(errors: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """keyword -> problem (without values) of every dciodvfy error line that names an attribute, and the
    lines that name none. A summary line counts as named when another line names an attribute."""
    from pydicom.datadict import dictionary_description, keyword_dict, keyword_for_tag

    by_name = {dictionary_description(tag): keyword for keyword, tag in keyword_dict.items()}
    named: dict[str, str] = {}
    unnamed: list[str] = []
    for line in errors:
        if found := _ELEMENT.match(line):
            keyword = found["keyword"]
        elif found := _TAG.match(line):
            keyword = keyword_for_tag(int(found["group"] + found["element"], 16))
        elif found := _NAMED.match(line):
            keyword = by_name.get(found["name"], "")
        else:
            unnamed.append(line)
            continue
        named.setdefault(keyword or line, found["problem"].split(" <")[0].strip())
    if named:
        unnamed = [line for line in unnamed if line not in _SUMMARIES]
    return named, unnamed


def _witness(path: Path, max_frames: int, folder: Path) -> tuple[Path, int] | None:
    """A copy of the SEG with some of its frames (see :func:`validate_with_dciodvfy`); ``None`` when the
    SEG has at most ``max_frames`` frames or its frames cannot be cut apart (bit-packed frames that do not
    end on a byte boundary)."""
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(path)
    total = int(ds.get("NumberOfFrames", 1) or 1)
    items = ds.get("PerFrameFunctionalGroupsSequence")
    if total <= max_frames or items is None or len(items) != total:
        return None
    frame_bits = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated)
    encapsulated = ds.file_meta.TransferSyntaxUID.is_encapsulated
    if not encapsulated and frame_bits % 8:
        return None
    shared = ds.SharedFunctionalGroupsSequence[0]
    first_last: dict[int, list[int]] = {}
    for index, item in enumerate(items):
        identification = item.get("SegmentIdentificationSequence") or shared.get(
            "SegmentIdentificationSequence"
        )
        segment = int(identification[0].ReferencedSegmentNumber) if identification else 0
        first_last.setdefault(segment, [index, index])[1] = index
    keep = {index for pair in first_last.values() for index in pair}
    spread = max(max_frames - len(keep), 0)
    keep.update(int(v) for v in np.linspace(0, total - 1, num=spread).round())
    kept = sorted(keep)
    if encapsulated:
        frames = list(generate_frames(ds.PixelData, number_of_frames=total))
        ds.PixelData = encapsulate([frames[i] for i in kept])
        ds["PixelData"].is_undefined_length = True
    else:
        size = frame_bits // 8
        data = b"".join(ds.PixelData[i * size : (i + 1) * size] for i in kept)
        ds.PixelData = data + b"\0" * (len(data) % 2)
    ds.PerFrameFunctionalGroupsSequence = [items[i] for i in kept]
    ds.NumberOfFrames = len(kept)
    witness = folder / "witness.dcm"
    ds.save_as(witness, enforce_file_format=True)
    return witness, len(kept)
