"""Attributes copied from a source image into a derived object (SEG now; SR, overlay images, RTSTRUCT), made
valid.

A derived object copies whole modules of its source (for a SEG: Patient, Clinical Trial Subject, General
Study, Patient Study, Clinical Trial Study, Specimen) and a few single attributes (Frame of Reference UID,
the source's Series Number and Description, the acquisition equipment, the references' UIDs). Real archives
hold sources whose values break the standard: a Study ID of 20 characters where SH allows 16, a name in
Latin-1 without a Specific Character Set, a Patient Species Description without the Patient Sex Neutered it
makes required. A derived object must not repeat those faults (its validation would fail and the PACS would
get nothing) and must stay in its patient's study. :func:`sanitize_source` returns a copy of the source
header in which every copied attribute is valid, and the corrections it made:

* text is decoded in the declared Specific Character Set; text that does not fit it (or is not ASCII where
  none is declared) is decoded as UTF-8 if valid, else Latin-1, and declared ``ISO_IR 100`` when Latin-1
  holds all copied text, else ``ISO_IR 192``; spellings such as ``ISO-8859-1`` become the Defined Term;
* every value is checked against pydicom's data dictionary and validators
  (:func:`dicom_node.outputs.attribute_values.value_problem`), a sequence as a whole (every value in its
  items, and the Type 1 and 2 attributes its items need);
* an invalid value is handled by the attribute's Type in the derived object's module: Type 1 refuses the
  source (:class:`SourceAttributeError`, naming the attribute) in a module the object must have and drops
  the module where it is optional; Type 2 (2C) is emptied; Type 3 (1C) is dropped;
* missing Type 1 attributes refuse (mandatory module) or drop the module (optional module); missing Type 2
  attributes are added empty;
* requirements that copied attributes make (Type 1C/2C, :data:`CONDITIONS`) are filled (2C: added empty)
  or the attribute that makes them is emptied or dropped (1C without a value to fill in).

Each correction names the attribute's keyword and the rule, never the value (values are PHI). The module
tables (attributes and Types of each module and of the items of its sequences) are the standard's, as
shipped with highdicom; which modules a derived object copies is data (:class:`CopiedAttributes`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache

from pydicom.datadict import dictionary_description, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from config.errors import SegNodeError
from dicom_node.outputs import attribute_values as values
from dicom_node.outputs.attribute_values import Correction
from dicom_node.outputs.copied_text import fix_character_set


class SourceAttributeError(SegNodeError):
    """A Type 1 attribute that a derived object copies from its source is missing or invalid: no valid
    object can be written (changing the value would detach it from the source's study or images)."""

    reason = "source_attribute_invalid"

    def __init__(self, message: str, keyword: str) -> None:
        super().__init__(message)
        self.keyword = keyword


@dataclass(frozen=True)
class CopiedModule:
    """A module the derived object copies from its source, by its key in the standard's module tables."""

    key: str
    #: Mandatory in the derived object's IOD: a Type 1 fault refuses the source (else the module is dropped).
    mandatory: bool

    @property
    def title(self) -> str:
        return " ".join(part.capitalize() for part in self.key.split("-"))


@dataclass(frozen=True)
class CopiedAttributes:
    """What a derived object takes from its source: whole modules, and single attributes with the Type
    that applies to them in the derived object (``"1"``: refuse; ``"2"``: empty; ``"3"``: drop)."""

    iod: str
    modules: tuple[CopiedModule, ...]
    attributes: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of_iod(
        cls,
        iod: str,
        ies: Sequence[str],
        *,
        modules: Sequence[str] = (),
        attributes: Sequence[tuple[str, str]] = (),
    ) -> CopiedAttributes:
        """The modules of the Information Entities ``ies`` of IOD ``iod`` (keys of the standard's tables,
        e.g. ``"segmentation"``, ``"rt-structure-set"``, ``"enhanced-sr"``) plus further ``modules`` of
        that IOD, with their usage (``M`` = mandatory) in it."""
        from highdicom._standard_utils import get_iod_module_map

        table = get_iod_module_map()[iod]
        chosen = [m for m in table if m["ie"] in ies or m["key"] in modules]
        return cls(
            iod=iod,
            modules=tuple(CopiedModule(str(m["key"]), m["usage"] == "M") for m in chosen),
            attributes=tuple(attributes),
        )


@cache
def _module_table(key: str) -> tuple[tuple[tuple[str, ...], str, str], ...]:
    """(path of sequence keywords, keyword, Type) of every attribute of a module, from highdicom's tables."""
    from highdicom._standard_utils import get_module_attribute_map

    return tuple(
        (tuple(str(p) for p in row["path"]), str(row["keyword"]), str(row["type"]))
        for row in get_module_attribute_map()[key]
    )


def root_attributes(key: str) -> list[tuple[str, str]]:
    """(keyword, Type) of the attributes at the root of a module."""
    return [(keyword, type_) for path, keyword, type_ in _module_table(key) if not path]


def _item_requirements(key: str, path: tuple[str, ...]) -> list[tuple[str, str]]:
    """(keyword, Type) of the Type 1 and 2 attributes that an item of the sequence at ``path`` must hold."""
    return [(k, t) for p, k, t in _module_table(key) if p == path and t in ("1", "2")]


@dataclass(frozen=True)
class Condition:
    """A requirement that copied attributes make (Type 1C/2C of PS3.3)."""

    #: When the requirement applies, in the words of the standard.
    text: str
    #: The condition holds when any of these attributes has a value (or, with ``equals``, that value).
    when: tuple[str, ...]
    #: Type 2C: each of these must be present (added empty). Type 1C: one of them must have a value.
    required: tuple[str, ...]
    type: str
    equals: str | None = None
    #: 1C unmet, no value to fill in: drop this module (instead of emptying/dropping the ``when`` attributes).
    drop_module: str | None = None


#: The Type 1C/2C requirements of the modules a derived object copies (PS3.3 C.7.1.1 Patient, C.7.2.2
#: Patient Study, C.7.1.3 Clinical Trial Subject, C.7.2.3 Clinical Trial Study).
CONDITIONS: tuple[Condition, ...] = (
    Condition(
        "Responsible Person has a value",
        when=("ResponsiblePerson",),
        required=("ResponsiblePersonRole",),
        type="1C",
    ),
    Condition(
        "the patient is an animal (Patient Species Description or Code Sequence present)",
        when=("PatientSpeciesDescription", "PatientSpeciesCodeSequence"),
        required=(
            "PatientSexNeutered",
            "PatientBreedDescription",
            "PatientBreedCodeSequence",
            "BreedRegistrationSequence",
            "ResponsiblePerson",
            "ResponsibleOrganization",
        ),
        type="2C",
    ),
    Condition(
        "a date in an alternative calendar is present",
        when=("PatientBirthDateInAlternativeCalendar", "PatientDeathDateInAlternativeCalendar"),
        required=("PatientAlternativeCalendar",),
        type="1C",
    ),
    Condition(
        "Patient Identity Removed is YES",
        when=("PatientIdentityRemoved",),
        equals="YES",
        required=("DeidentificationMethod", "DeidentificationMethodCodeSequence"),
        type="1C",
    ),
    Condition(
        "the Clinical Trial Subject module is present",
        when=("ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialSiteID"),
        required=("ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID"),
        type="1C",
        drop_module="clinical-trial-subject",
    ),
    Condition(
        "an Ethics Committee Approval Number is present",
        when=("ClinicalTrialProtocolEthicsCommitteeApprovalNumber",),
        required=("ClinicalTrialProtocolEthicsCommitteeName",),
        type="1C",
    ),
    Condition(
        "a Longitudinal Temporal Offset from Event is present",
        when=("LongitudinalTemporalOffsetFromEvent",),
        required=("LongitudinalTemporalEventType",),
        type="1C",
    ),
)


@dataclass(frozen=True)
class SanitizedSource:
    """A copy of a source header whose copied attributes are valid, and the corrections made to it."""

    header: Dataset
    corrections: tuple[Correction, ...]


@dataclass
class _Work:
    dataset: Dataset
    copied: CopiedAttributes
    where: str
    corrections: list[Correction] = field(default_factory=list)
    #: keyword -> (Type, module or None) of every attribute the derived object copies.
    types: dict[str, tuple[str, CopiedModule | None]] = field(default_factory=dict)

    def note(self, keyword: str, problem: str, action: str) -> None:
        self.corrections.append(Correction(keyword, problem, action))


def _tag(keyword: str) -> BaseTag:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"{keyword!r} is not a keyword of the DICOM data dictionary")
    return Tag(tag)


def describe(keyword: str) -> str:
    """``Study ID (0020,0010)``: the attribute's name and tag for messages people read."""
    tag = _tag(keyword)
    return f"{dictionary_description(tag)} ({tag.group:04X},{tag.element:04X})"


def _types(copied: CopiedAttributes) -> dict[str, tuple[str, CopiedModule | None]]:
    out: dict[str, tuple[str, CopiedModule | None]] = {}
    for module in copied.modules:
        for keyword, type_ in root_attributes(module.key):
            out.setdefault(keyword, (type_, module))
    for keyword, type_ in copied.attributes:
        out.setdefault(keyword, (type_, None))
    return out


def sanitize_source(header: Dataset, copied: CopiedAttributes, where: str) -> SanitizedSource:
    """A copy of ``header`` whose attributes that ``copied`` names are valid; the header is not changed.

    ``where`` names the series in messages (``series 1.2.3 stack 2``). Raises :class:`SourceAttributeError`
    when a Type 1 attribute of a mandatory module (or a single Type 1 attribute) is missing or invalid.
    """
    work = _Work(private_copy(header), copied, where)
    work.types = _types(copied)
    _fix_value_representations(work)
    fix_character_set(work.dataset, [_tag(k) for k in work.types], work.note)
    for keyword, (_, module) in work.types.items():
        tag = _tag(keyword)
        if tag not in work.dataset or values.is_empty(work.dataset, tag):
            continue
        problem = _problem(work, tag, module)
        if problem is not None:
            apply_type_rule(work, keyword, problem)
    for condition in CONDITIONS:
        _apply_condition(work, condition)
    _require_types(work)
    return SanitizedSource(work.dataset, tuple(work.corrections))


def private_copy(header: Dataset) -> Dataset:
    """A copy of ``header`` whose elements can be replaced without touching ``header`` (``Dataset(header)``
    shares the element dictionary); values are not converted (raw elements stay raw)."""
    out = Dataset({tag: header.get_item(tag) for tag in header.keys()})
    if "file_meta" in header.__dict__:
        out.file_meta = header.file_meta
    return out


def _fix_value_representations(work: _Work) -> None:
    """Elements stored with another VR than the dictionary's (UN after an implicit-to-explicit conversion,
    LO for an SH attribute) are read with the dictionary's VR where the bytes mean the same (string VRs;
    UN, whose bytes are those of the dictionary VR); their values are then checked as that VR."""
    ds = work.dataset
    for keyword in work.types:
        tag = _tag(keyword)
        element = ds.get_item(tag) if tag in ds else None
        if not isinstance(element, RawDataElement) or not element.VR:
            continue
        expected = values.dictionary_vr(tag)
        if expected is None or " or " in expected or element.VR == expected or expected == "SQ":
            continue
        if element.VR != "UN" and not {element.VR, expected} <= values.STRING_VRS:
            continue  # e.g. a number stored as text: the value check reports the VR, the Type decides
        ds[tag] = RawDataElement(
            tag,
            expected,
            element.length,
            element.value,
            element.value_tell,
            element.is_implicit_VR,
            element.is_little_endian,
        )
        work.note(keyword, f"VR {element.VR} where the dictionary has {expected}", f"read as {expected}")


def correct_derived(
    dataset: Dataset, reported: dict[str, str], copied: CopiedAttributes, where: str
) -> tuple[tuple[Correction, ...], list[str]]:
    """Apply the Type rules, in a written derived object, to attributes its validator reports as invalid
    where the object copied them from its source (a fault of the source the checks here did not know).

    ``reported`` maps keywords to the validator's problem (without values). Returns the corrections made
    (``dataset`` is changed in place) and the keywords that are not copied attributes (faults of the
    object's own content, which the caller must not correct). Raises :class:`SourceAttributeError` for a
    Type 1 attribute of a mandatory module or a single Type 1 attribute.
    """
    work = _Work(dataset, copied, where)
    work.types = _types(copied)
    own = []
    for keyword, problem in reported.items():
        if keyword not in work.types:
            own.append(keyword)
            continue
        type_ = work.types[keyword][0]
        tag = _tag(keyword)
        if tag not in dataset and type_ in ("2", "2C"):
            vr = values.dictionary_vr(tag) or "UN"
            dataset[tag] = DataElement(tag, vr, empty_value_for_VR(vr))
            work.note(keyword, f"{problem} (reported by the validator)", f"added empty (Type {type_})")
        else:
            apply_type_rule(work, keyword, f"{problem} (reported by the validator)")
    return tuple(work.corrections), own


def _problem(work: _Work, tag: BaseTag, module: CopiedModule | None) -> str | None:
    element = work.dataset.get_item(tag)
    vr = element.VR or values.dictionary_vr(tag)
    if vr == "UN":
        vr = values.dictionary_vr(tag)
    if vr != "SQ":
        return values.value_problem(work.dataset, tag)
    try:
        sequence = work.dataset[tag].value
    except (ValueError, TypeError, KeyError) as exc:
        return f"unreadable sequence ({type(exc).__name__})"
    keyword = str(work.dataset[tag].keyword)
    return _sequence_problem(sequence, module.key if module else None, (keyword,))


def _sequence_problem(items: Iterable[Dataset], module: str | None, path: tuple[str, ...]) -> str | None:
    """What is wrong anywhere in the items of a sequence (first problem found), or ``None``."""
    for number, item in enumerate(items, start=1):
        for tag in list(item.keys()):
            if tag.is_private:
                continue
            keyword = keyword_for_tag(tag) or str(tag)
            vr = item.get_item(tag).VR or values.dictionary_vr(tag)
            if vr == "SQ" or (vr == "UN" and values.dictionary_vr(tag) == "SQ"):
                try:
                    problem = _sequence_problem(item[tag].value, module, (*path, keyword))
                except (ValueError, TypeError, KeyError) as exc:
                    problem = f"unreadable sequence ({type(exc).__name__})"
            else:
                problem = values.value_problem(item, tag)
            if problem is not None:
                return f"{'/'.join(path[1:] + (keyword,))} in item {number}: {problem}"
        for keyword, type_ in _item_requirements(module, path) if module else []:
            tag = _tag(keyword)
            if tag not in item or (type_ == "1" and values.is_empty(item, tag)):
                return f"item {number} lacks {keyword} (Type {type_})"
    return None


def apply_type_rule(work: _Work, keyword: str, problem: str) -> None:
    """Handle an invalid value by the attribute's Type: refuse or drop the module (1), empty (2, 2C), drop
    (3, 1C)."""
    type_, module = work.types.get(keyword, ("3", None))
    tag = _tag(keyword)
    if type_ == "1":
        if module is not None and not module.mandatory:
            _drop_module(work, module, keyword, problem)
            return
        raise _refusal(work.where, keyword, problem, work.copied.iod)
    if type_ in ("2", "2C"):
        vr = values.dictionary_vr(tag) or "UN"
        work.dataset[tag] = DataElement(tag, vr, empty_value_for_VR(vr))
        work.note(keyword, problem, f"emptied (Type {type_})")
    else:
        if tag in work.dataset:
            del work.dataset[tag]
        work.note(keyword, problem, f"dropped (Type {type_})")


def _refusal(where: str, keyword: str, problem: str, iod: str) -> SourceAttributeError:
    return SourceAttributeError(
        f"{where}: the source's {describe(keyword)} {problem}; it is Type 1 in the {iod} object and cannot "
        "be corrected without detaching the result from the source: correct it at the modality or in the "
        "PACS and send the series again",
        keyword,
    )


def check_uids(header: Dataset, keywords: Sequence[str], where: str, iod: str) -> None:
    """Raise :class:`SourceAttributeError` when one of the UIDs ``keywords`` of a source header is missing or
    invalid (UIDs that a derived object's references carry unchanged, e.g. SOP Instance UID)."""
    for keyword in keywords:
        tag = _tag(keyword)
        problem = "missing or empty" if values.is_empty(header, tag) else values.value_problem(header, tag)
        if problem is not None:
            raise _refusal(where, keyword, problem, iod)


def _drop_module(work: _Work, module: CopiedModule, keyword: str, problem: str) -> None:
    for other, _ in root_attributes(module.key):
        tag = _tag(other)
        if tag in work.dataset:
            del work.dataset[tag]
    work.note(keyword, problem, f"module {module.title} dropped (Type 1 in an optional module)")


def _has_value(dataset: Dataset, keyword: str, equals: str | None = None) -> bool:
    tag = _tag(keyword)
    if values.is_empty(dataset, tag):
        return False
    if equals is None:
        return True
    found = values.string_values(dataset.get_item(tag), values.dictionary_vr(tag) or "CS")
    return isinstance(found, list) and equals in found


def _apply_condition(work: _Work, condition: Condition) -> None:
    ds = work.dataset
    if not any(k in work.types for k in condition.required):
        return
    if not any(_has_value(ds, k, condition.equals) for k in condition.when):
        return
    if condition.type == "2C":
        for keyword in condition.required:
            tag = _tag(keyword)
            if tag not in ds:
                vr = values.dictionary_vr(tag) or "UN"
                ds[tag] = DataElement(tag, vr, empty_value_for_VR(vr))
                work.note(keyword, f"missing, required when {condition.text}", "added empty (Type 2C)")
        return
    if any(_has_value(ds, k) for k in condition.required):
        return
    problem = f"{' or '.join(condition.required)} missing, required when {condition.text}"
    if condition.drop_module is not None:
        module = next((m for m in work.copied.modules if m.key == condition.drop_module), None)
        if module is not None:
            _drop_module(work, module, condition.required[0], problem)
            return
    # The attribute that makes the requirement cannot keep its value: emptied (Type 2/2C) or dropped.
    for keyword in condition.when:
        if _tag(keyword) in ds:
            _drop_or_refuse(work, keyword, problem)


def _drop_or_refuse(work: _Work, keyword: str, problem: str) -> None:
    type_, module = work.types.get(keyword, ("3", None))
    if type_ == "1" and module is not None and not module.mandatory:
        _drop_module(work, module, keyword, problem)
        return
    apply_type_rule(work, keyword, problem)


def _module_present(dataset: Dataset, module: CopiedModule) -> bool:
    return any(_tag(k) in dataset for k, _ in root_attributes(module.key))


def _require_types(work: _Work) -> None:
    """Missing Type 1: refuse or drop the optional module; missing Type 2: added empty."""
    ds = work.dataset
    for module in work.copied.modules:
        if not module.mandatory and not _module_present(ds, module):
            continue
        for keyword, type_ in root_attributes(module.key):
            tag = _tag(keyword)
            if type_ == "1" and values.is_empty(ds, tag):
                _drop_or_refuse(work, keyword, "missing or empty")
                if not module.mandatory:
                    break
            elif type_ == "2" and tag not in ds:
                vr = values.dictionary_vr(tag) or "UN"
                ds[tag] = DataElement(tag, vr, empty_value_for_VR(vr))
                work.note(keyword, "missing", "added empty (Type 2)")
    for keyword, type_ in work.copied.attributes:
        if type_ == "1" and values.is_empty(ds, _tag(keyword)):
            apply_type_rule(work, keyword, "missing or empty")
