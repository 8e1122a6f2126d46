"""UIDs are validated before they touch a path: tolerant of real scanners, strict on anything else."""

from __future__ import annotations

import pytest

from dicom_node.uids import InvalidUIDError, path_safe_uid


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4"),
        ("2.16.124.113543.6006.99.08975550791105350405", "2.16.124.113543.6006.99.08975550791105350405"),
        ("1.2.3\x00", "1.2.3"),  # NUL padding of an odd-length UI value
        ("1.2.3 ", "1.2.3"),
        ("1." + "2" * 62, "1." + "2" * 62),  # exactly 64 characters
    ],
)
def test_valid_uids_pass(value: str, expected: str) -> None:
    assert path_safe_uid(value, "SOP Instance UID") == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("../../etc/passwd", "is not a DICOM UID"),
        ("1.2/3", "is not a DICOM UID"),
        ("1.2\\3", "is not a DICOM UID"),
        ("..", "is not a DICOM UID"),
        ("1..2", "is not a DICOM UID"),
        (".1.2", "is not a DICOM UID"),
        ("1.2.", "is not a DICOM UID"),
        ("1.2.3a", "is not a DICOM UID"),
        ("1.2.3\n", "is not a DICOM UID"),
        ("1." + "2" * 63, "longer than 64 characters"),
        ("", "is empty"),
        (None, "is missing or not text"),
    ],
)
def test_unusable_uids_are_refused_with_the_attribute_named(value: object, message: str) -> None:
    with pytest.raises(InvalidUIDError, match=f"Series Instance UID.*{message}"):
        path_safe_uid(value, "Series Instance UID")
