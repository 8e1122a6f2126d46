"""DICOM status codes SegNode returns, named as in PS3.4 Annex B (Storage) and PS3.7 Annex C.

Every status a handler returns is one of these constants; nothing returns a bare number.
"""

from __future__ import annotations

from typing import Final

#: Success (PS3.7 C.1.1).
SUCCESS: Final = 0x0000
#: Refused: Out of Resources (PS3.4 B.2.3): disk full or below the free-space watermark.
OUT_OF_RESOURCES: Final = 0xA700
#: Error: Data Set does not match SOP Class (PS3.4 B.2.3): the SOP Class UID in the data set differs
#: from the Affected SOP Class UID of the request.
DATASET_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900
#: Error: Cannot understand (PS3.4 B.2.3, 0xCxxx; pynetdicom's 0xC210): the data set cannot be parsed or
#: lacks a valid Study/Series/SOP Instance UID.
CANNOT_UNDERSTAND: Final = 0xC210
#: Failure: Processing failure (PS3.7 C.4.2): an unexpected local failure (I/O error, database error).
PROCESSING_FAILURE: Final = 0x0110

NAMES: Final[dict[int, str]] = {
    SUCCESS: "Success",
    OUT_OF_RESOURCES: "Refused: Out of Resources",
    DATASET_DOES_NOT_MATCH_SOP_CLASS: "Error: Data Set does not match SOP Class",
    CANNOT_UNDERSTAND: "Error: Cannot understand",
    PROCESSING_FAILURE: "Failure: Processing failure",
}


def describe(status: int) -> str:
    """``0xA700 Refused: Out of Resources`` style text for logs and the audit log."""
    return f"0x{status:04X} {NAMES.get(status, 'unknown status')}"


# A-ASSOCIATE-RJ parameters (PS3.8 9.3.4): (result, source, reason/diagnostic).
REJECTED_PERMANENT: Final = 0x01
REJECTED_TRANSIENT: Final = 0x02
SOURCE_SERVICE_USER: Final = 0x01
SOURCE_SERVICE_PROVIDER_PRESENTATION: Final = 0x03
REASON_NO_REASON_GIVEN: Final = 0x01
REASON_CALLING_AE_NOT_RECOGNISED: Final = 0x03
REASON_CALLED_AE_NOT_RECOGNISED: Final = 0x07
REASON_TEMPORARY_CONGESTION: Final = 0x01
REASON_LOCAL_LIMIT_EXCEEDED: Final = 0x02
