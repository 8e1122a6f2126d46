"""Is a copied attribute's value valid? Checks against pydicom's data dictionary and value validators.

:func:`value_problem` says what is wrong with one element of a source header (value length, characters,
format, value multiplicity, enumerated values, a VR other than the dictionary's), in words that never
contain the value itself (values are PHI). The text of text VRs is decoded first
(:mod:`dicom_node.outputs.copied_text`); the rules that decide what to do about a problem (empty, drop,
refuse) are in :mod:`dicom_node.outputs.derived_attributes`.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.valuerep import MAX_VALUE_LEN, VALIDATORS, PersonName


@dataclass(frozen=True)
class Correction:
    """One correction of a copied attribute: its keyword, what was wrong and what was done (no value)."""

    keyword: str
    problem: str
    action: str

    def __str__(self) -> str:
        return f"{self.keyword}: {self.problem} -> {self.action}"


#: Text VRs: their bytes are in the Specific Character Set (PS3.5 6.1.2.3).
TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "PN", "UC", "UT"})
#: Free text: may hold CR, LF, FF and TAB (PS3.5 6.2); the other string VRs no control character but ESC.
_FREE_TEXT_VRS = frozenset({"ST", "LT", "UT"})
_FREE_TEXT_CONTROLS = frozenset("\t\n\r\f\x1b")
#: String VRs whose values pydicom's validators check or whose length PS3.5 limits.
STRING_VRS = TEXT_VRS | {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"}
#: Value length limits that pydicom's table leaves out (PS3.5 Table 6.2-1), in characters.
_MORE_LIMITS = {"AS": 4, "DA": 18, "DT": 54, "TM": 28, "UC": 0, "UR": 0, "UT": 0}

#: Enumerated Values that PS3.3 defines for attributes a derived object copies (C.7.1.1 Patient, C.7.2.2
#: Patient Study, C.7.2.3 Clinical Trial Study, C.7.6.1 General Image, C.7.1.1 Type of Patient ID).
ENUMERATED_VALUES: dict[str, frozenset[str]] = {
    "PatientSex": frozenset({"M", "F", "O"}),
    "PatientSexNeutered": frozenset({"ALTERED", "UNALTERED"}),
    "PatientIdentityRemoved": frozenset({"YES", "NO"}),
    "QualityControlSubject": frozenset({"YES", "NO"}),
    "SmokingStatus": frozenset({"YES", "NO", "UNKNOWN"}),
    "PregnancyStatus": frozenset({"1", "2", "3", "4"}),
    "TypeOfPatientID": frozenset({"TEXT", "RFID", "BARCODE"}),
    "LongitudinalTemporalEventType": frozenset({"ENROLLMENT", "BASELINE"}),
    "LossyImageCompression": frozenset({"00", "01"}),
}


def dictionary_vr(tag: BaseTag) -> str | None:
    """The VR of a tag in pydicom's data dictionary (``None`` for private or unknown tags)."""
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def vm_allows(vm: str, count: int) -> bool:
    """Whether ``count`` values fit a dictionary VM (``1``, ``1-3``, ``1-n``, ``2-2n``)."""
    if count == 0:
        return True
    low, _, high = vm.partition("-")
    if not low.isdigit():
        return True
    if not high:
        return count == int(low)
    if high.endswith("n"):
        step = int(high[:-1] or 1)
        return count >= int(low) and count % step == 0
    return int(low) <= count <= int(high)


def is_empty(dataset: Dataset, tag: BaseTag) -> bool:
    """Whether the element is absent or has no value."""
    if tag not in dataset:
        return True
    item = dataset.get_item(tag)
    if isinstance(item, RawDataElement):
        return not item.value or not bytes(item.value).strip(b" \x00")
    value = item.value
    return value is None or value == "" or (isinstance(value, (list, MultiValue, bytes)) and len(value) == 0)


def _raw_strings(vr: str, data: bytes) -> list[str] | str:
    """Values of a raw non-text string element, or the problem (non-ASCII bytes)."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return f"characters outside the default repertoire of {vr}"
    return _split(vr, text)


def _split(vr: str, text: str) -> list[str]:
    text = text.rstrip("\x00 ") if vr == "UI" else text.rstrip(" ")
    if text == "":
        return []
    if vr in _FREE_TEXT_VRS:
        return [text]
    return [v.rstrip("\x00 ") if vr == "UI" else v.rstrip(" ") for v in text.split("\\")]


def _as_text(value: Any) -> str:
    original = getattr(value, "original_string", None)
    if isinstance(original, str):
        return original
    if isinstance(value, PersonName):
        return str(value)
    return str(value)


def string_values(element: DataElement | RawDataElement, vr: str) -> list[str] | str:
    """The values of a string element as text, or why they cannot be read."""
    if isinstance(element, RawDataElement):
        data = bytes(element.value or b"")
        if vr in TEXT_VRS:
            return _split(vr, data.decode("latin-1"))
        return _raw_strings(vr, data)
    value = element.value
    if value is None or value == "":
        return []
    if isinstance(value, (list, MultiValue)):
        return [_as_text(v) for v in value]
    if isinstance(value, bytes):
        return _raw_strings(vr, value)
    text = _as_text(value)
    return _split(vr, text) if vr not in _FREE_TEXT_VRS else [text]


def _date_problem(value: str) -> str | None:
    if "-" in value:
        return None  # a range (query syntax): the regex has checked it
    try:
        datetime.datetime.strptime(value[:8], "%Y%m%d")
    except ValueError:
        return "not a date that exists (DA)"
    return None


def _one_value_problem(vr: str, value: str) -> str | None:
    """What is wrong with one value of a string VR (without the value), or ``None``."""
    if vr in _FREE_TEXT_VRS:
        if any(c < " " and c not in _FREE_TEXT_CONTROLS for c in value):
            return f"control character in {vr}"
    elif any(c < " " and c != "\x1b" for c in value) or "\x7f" in value:
        return f"control character in {vr}"
    if vr == "PN":
        groups = value.split("=")
        if len(groups) > 3:
            return f"person name with {len(groups)} component groups (at most 3)"
        longest = max(len(g) for g in groups)
        if longest > 64:
            return f"person name component group of {longest} characters exceeds 64 (PN)"
        if any(g.count("^") > 4 for g in groups):
            return "person name with more than 5 components"
        return None
    limit = MAX_VALUE_LEN.get(vr) or _MORE_LIMITS.get(vr, 0)
    if limit and len(value) > limit:
        return f"value length {len(value)} exceeds {limit} ({vr})"
    validator: Callable[[str, Any], tuple[bool, str]] | None = VALIDATORS.get(vr)
    if validator is not None and not validator(vr, value)[0]:
        return f"not a valid {vr} value"
    if vr == "DA":
        return _date_problem(value)
    return None


def _values_problem(tag: BaseTag, vr: str, values: Sequence[str]) -> str | None:
    for value in values:
        problem = _one_value_problem(vr, value)
        if problem is not None:
            return problem
    return _vm_and_enum_problem(tag, values)


def _vm_and_enum_problem(tag: BaseTag, values: Sequence[Any]) -> str | None:
    try:
        vm = str(dictionary_VM(tag))
    except KeyError:
        vm = "1-n"
    if not vm_allows(vm, len(values)):
        return f"{len(values)} values where the dictionary allows VM {vm}"
    allowed = ENUMERATED_VALUES.get(keyword_for_tag(tag))
    if allowed is not None and any(str(v) not in allowed for v in values if str(v) != ""):
        return "not one of the Enumerated Values of PS3.3"
    return None


def value_problem(dataset: Dataset, tag: BaseTag) -> str | None:
    """Why the value of a (non-sequence) element is invalid, in words without the value; ``None`` if valid.

    Checks the VR against the dictionary's, then (string VRs) control characters, value length, pydicom's
    validators (``pydicom.valuerep.VALIDATORS``: character repertoire and format of AE, AS, CS, DA, DS, DT,
    IS, TM, UI, UR), dates that do not exist, person name structure; (all VRs) the value multiplicity of the
    dictionary and the enumerated values of :data:`ENUMERATED_VALUES`.
    """
    element = dataset.get_item(tag)
    expected = dictionary_vr(tag)
    vr = str(element.VR) if element.VR and element.VR != "UN" else (expected or "UN")
    if expected is not None and " or " not in expected and vr != expected:
        return f"VR {vr} where the dictionary has {expected}"
    if vr in STRING_VRS:
        values = string_values(element, vr)
        if isinstance(values, str):
            return values
        return _values_problem(tag, vr, values)
    try:
        value = dataset[tag].value
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        return f"unreadable {vr} value ({type(exc).__name__})"
    if value is None or isinstance(value, (bytes, bytearray)):
        return None
    values = list(value) if isinstance(value, (list, MultiValue)) else [value]
    return _vm_and_enum_problem(tag, values)
