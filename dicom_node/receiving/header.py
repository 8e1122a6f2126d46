"""The header an instance is filed by (:class:`InstanceHeader`): read from where the C-STORE's structure
check found its elements (:func:`dicom_node.receiving.admission.check_encoding`), or by pydicom for the
encodings that check leaves to it (big endian)."""

from __future__ import annotations

import io

from pydicom import dcmread
from pydicom.dataset import Dataset

from conversion.rawheader import RawHeader
from dicom_node.audit.log import InstanceHeader
from dicom_node.uids import path_safe_uid

_HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "AcquisitionNumber",
    "ImagesInAcquisition",
]


def read_header(data: bytes, transfer_syntax: str, raw: RawHeader | None = None) -> InstanceHeader:
    """Read the identifying attributes of an encoded instance (no pixel data); ValueError if unusable.

    ``raw``: where :func:`check_encoding` found them in ``data``; they are then decoded from there (text in
    the instance's character set) without pydicom's dataset, its value validation and its per-value
    warnings. Without it (big endian) pydicom reads the header.
    """
    if raw is None:
        return _header_from_dataset(data, transfer_syntax)
    images = _text(raw, 0x00201002)
    acquisition = _text(raw, 0x00200012)
    return InstanceHeader(
        sop_class_uid=_text(raw, 0x00080016) or "",
        sop_instance_uid=path_safe_uid(_uid(raw, 0x00080018), "SOP Instance UID"),
        study_instance_uid=path_safe_uid(_uid(raw, 0x0020000D), "Study Instance UID"),
        series_instance_uid=path_safe_uid(_uid(raw, 0x0020000E), "Series Instance UID"),
        transfer_syntax_uid=transfer_syntax,
        modality=_text(raw, 0x00080060) or None,
        patient_id=_text(raw, 0x00100020),
        patient_name=_text(raw, 0x00100010),
        patient_birth_date=_text(raw, 0x00100030) or None,
        images_in_acquisition=_integer(images) if images else None,
        acquisition_number=acquisition or None,
    )


def _text(raw: RawHeader, tag: int) -> str | None:
    """The value of a text element (several values joined by backslashes); ``None`` when absent."""
    return "\\".join(raw.text(tag)) if raw.has(tag) else None


def _uid(raw: RawHeader, tag: int) -> str | list[str] | None:
    """A UID element's value: its text, a list when it has several values (not a UID), ``None`` when
    absent (as pydicom gives them to :func:`path_safe_uid`)."""
    values = raw.text(tag)
    return values if len(values) > 1 else _text(raw, tag)


def _integer(text: str) -> int:
    """An IS value; ValueError unless it is a whole number."""
    try:
        return int(text)
    except ValueError:
        number = float(text)  # ValueError: not a number
        if not number.is_integer():
            raise ValueError(f"Images in Acquisition {text!r} is not an integer") from None
        return int(number)


def _header_from_dataset(data: bytes, transfer_syntax: str) -> InstanceHeader:
    ds: Dataset = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    images = ds.get("ImagesInAcquisition")
    acq = ds.get("AcquisitionNumber")
    name = ds.get("PatientName")
    return InstanceHeader(
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        sop_instance_uid=path_safe_uid(ds.get("SOPInstanceUID"), "SOP Instance UID"),
        study_instance_uid=path_safe_uid(ds.get("StudyInstanceUID"), "Study Instance UID"),
        series_instance_uid=path_safe_uid(ds.get("SeriesInstanceUID"), "Series Instance UID"),
        transfer_syntax_uid=transfer_syntax,
        modality=str(ds.Modality) if ds.get("Modality") else None,
        patient_id=str(ds.PatientID) if ds.get("PatientID") is not None else None,
        patient_name=str(name) if name is not None else None,
        patient_birth_date=str(ds.PatientBirthDate) if ds.get("PatientBirthDate") else None,
        images_in_acquisition=int(images) if images not in (None, "") else None,
        acquisition_number=str(acq) if acq not in (None, "") else None,
    )
