"""The volumetry report: a Comprehensive 3D SR following TID 1500 (Measurement Report), one per stack.

One Volumetric ROI measurement group (TID 1411) per structure of the stack's SEG, holding:

* a Tracking Identifier (the structure's display name) and Tracking Unique Identifier (derived UID);
* the referenced SEG segment (the SEG's SOP Instance UID and segment number) and the source series;
* the Finding Site with its laterality (codes of the structure catalog); TID 1411's optional Finding and
  Finding Category are left out: the Finding would repeat the site's code, and both are in the referenced
  SEG segment (its Segmented Property Type and Category), so the report is smaller and faster to build;
* the volume (SCT 118565006 "Volume") in UCUM ``ml``: voxel count x voxel volume;
* two qualitative evaluations answered Yes or No, coded in SegNode's local coding scheme ``99SEGNODE``
  (identified in the Coding Scheme Identification Sequence): ``BORDER`` "touches the image border: the
  volume is a lower bound" and, for structures with a cut-off, ``IMPLAUSIBLE`` "below the plausibility
  cut-off: likely failed segmentation" (see :mod:`dicom_node.outputs.volumetry`).

The procedure reported is LOINC 25056-3 "MRI unspecified body region" (CID 100); the observer is the node
as a device. Patient and study attributes come from the first source image through the sanitiser; the
evidence is the source images and the SEG (Current Requested Procedure Evidence Sequence). UIDs are derived
from the SEG's identity (:class:`dicom_node.outputs.derived.DerivedContext`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom.charset import default_encoding
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence as PydicomSequence
from pydicom.tag import BaseTag
from pydicom.uid import UID

from dicom_node.outputs.derived import (
    DerivedContext,
    DerivedEncodingError,
    OutputKind,
    lo,
    set_equipment,
)
from dicom_node.outputs.item_bytes import as_written, dataset_item, held_sequence, sequence
from dicom_node.outputs.seg import EncodedSeg
from dicom_node.outputs.seg_segments import CodeTriple, SegmentSpec
from dicom_node.outputs.volumetry import StructureVolume, Volumetry

if TYPE_CHECKING:
    import highdicom as hd

logger = logging.getLogger(__name__)

#: SegNode's local coding scheme (a "99" designator: PS3.3 8.2) for the two qualitative evaluations.
LOCAL_SCHEME = "99SEGNODE"
BORDER_CODE = CodeTriple("BORDER", LOCAL_SCHEME, "Touches image border: volume is a lower bound")
IMPLAUSIBLE_CODE = CodeTriple("IMPLAUSIBLE", LOCAL_SCHEME, "Below plausibility cut-off: likely failed")
ML = CodeTriple("ml", "UCUM", "milliliter")
#: Series Number offset of the SR (the SEG uses the ``seg.series_number_offset``, 1000 by default).
SR_SERIES_NUMBER_OFFSET = 2000
_CONTENT_SEQUENCE = BaseTag(0x0040A730)
#: Types of values whose element bytes depend on the tag, VR, value and character set alone.
_PLAIN = frozenset((str, int, UID))


@dataclass(frozen=True)
class EncodedSr:
    """A volumetry SR ready to be written or sent."""

    dataset: Dataset
    series_instance_uid: str
    sop_instance_uid: str


def _concept(code: CodeTriple) -> hd.sr.CodedConcept:
    import highdicom as hd

    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


@dataclass(frozen=True)
class _Shared:
    """The content items and concepts that every measurement group holds alike, made once per report: the
    groups' content sequences hold the same (never changed) items, and highdicom's deep copy of the
    content tree copies each of them once."""

    algorithm_id: hd.sr.AlgorithmIdentification
    source_series: hd.sr.SourceSeriesForSegmentation
    border: hd.sr.CodedConcept
    implausible: hd.sr.CodedConcept
    yes: hd.sr.CodedConcept
    no: hd.sr.CodedConcept
    ml: hd.sr.CodedConcept
    volume: hd.sr.CodedConcept
    #: Concepts of the catalog (finding site, laterality) by code, made once each.
    concepts: dict[CodeTriple, hd.sr.CodedConcept]
    #: Qualitative evaluations by question (code value) and answer, made once each.
    evaluations: dict[tuple[str, bool], hd.sr.QualitativeEvaluation]

    @classmethod
    def of(cls, context: DerivedContext) -> _Shared:
        import highdicom as hd
        from pydicom.sr.codedict import codes

        algorithm = context.algorithm
        return cls(
            algorithm_id=hd.sr.AlgorithmIdentification(
                name=lo(f"{algorithm.name} {algorithm.task}"),
                version=lo(algorithm.version),
                parameters=[lo(f"{k}={v}") for k, v in sorted(algorithm.parameters.items())] or None,
            ),
            source_series=hd.sr.SourceSeriesForSegmentation(context.volume.series_instance_uid),
            border=_concept(BORDER_CODE),
            implausible=_concept(IMPLAUSIBLE_CODE),
            yes=hd.sr.CodedConcept.from_code(codes.SCT.Yes),
            no=hd.sr.CodedConcept.from_code(codes.SCT.No),
            ml=_concept(ML),
            volume=hd.sr.CodedConcept.from_code(codes.SCT.Volume),
            concepts={},
            evaluations={},
        )

    def concept(self, code: CodeTriple) -> hd.sr.CodedConcept:
        found = self.concepts.get(code)
        if found is None:
            found = self.concepts[code] = _concept(code)
        return found

    def evaluation(self, question: hd.sr.CodedConcept, flag: bool) -> hd.sr.QualitativeEvaluation:
        """The evaluation ``question``: Yes or No, made once per report for each question and answer."""
        import highdicom as hd

        key = (question.value, flag)
        found = self.evaluations.get(key)
        if found is None:
            answer = self.yes if flag else self.no
            found = self.evaluations[key] = hd.sr.QualitativeEvaluation(question, answer)
        return found


@dataclass(frozen=True)
class _Parts:
    """What one structure's measurement group holds of its own (highdicom's templates and content items);
    the group's other items (the algorithm identification, the container's name and template) are alike
    in every group."""

    tracking: hd.sr.TrackingIdentifier
    segment: hd.sr.ReferencedSegment
    site: hd.sr.FindingSite
    measurement: hd.sr.Measurement
    evaluations: tuple[hd.sr.QualitativeEvaluation, ...]

    def items(self) -> list[Dataset]:
        """The content items of the parts, in a fixed order."""
        return [
            *self.tracking,
            *self.segment,
            self.site,
            *self.measurement,
            *(i for e in self.evaluations for i in e),
        ]

    def shape(self) -> tuple[int, ...]:
        """How many items each part has: groups of the same shape differ only in their parts' items."""
        return (
            len(self.tracking),
            len(self.segment),
            len(self.measurement),
            *(len(e) for e in self.evaluations),
        )


def _parts(
    context: DerivedContext,
    shared: _Shared,
    structure: StructureVolume,
    spec: SegmentSpec,
    seg: EncodedSeg,
    number: int,
) -> _Parts:
    import highdicom as hd

    evaluations = [shared.evaluation(shared.border, structure.touches_border)]
    if structure.cutoff_ml is not None:
        evaluations.append(shared.evaluation(shared.implausible, structure.below_cutoff))
    return _Parts(
        tracking=hd.sr.TrackingIdentifier(
            uid=context.uid(OutputKind.SR, f"tracking-{structure.label}"), identifier=lo(spec.name)
        ),
        segment=hd.sr.ReferencedSegment(
            sop_class_uid=str(seg.dataset.SOPClassUID),
            sop_instance_uid=seg.sop_instance_uid,
            segment_number=number,
            source_series=shared.source_series,
        ),
        site=hd.sr.FindingSite(
            anatomic_location=shared.concept(spec.type),
            laterality=None if spec.modifier is None else shared.concept(spec.modifier),
        ),
        measurement=hd.sr.Measurement(name=shared.volume, value=structure.volume_ml, unit=shared.ml),
        evaluations=tuple(evaluations),
    )


def _group(shared: _Shared, parts: _Parts) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """highdicom's TID 1411 measurement group of ``parts``."""
    import highdicom as hd

    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=parts.tracking,
        referenced_segment=parts.segment,
        algorithm_id=shared.algorithm_id,
        finding_sites=[parts.site],
        measurements=[parts.measurement],
        qualitative_evaluations=list(parts.evaluations),
    )


class _Layout:
    """Where a highdicom-made measurement group holds its parts' items (:meth:`_Parts.items`): the
    positions in its container's Content Sequence, found by identity. A group of the same shape is that
    container's elements with those items replaced (:meth:`like`): the same content, without building
    highdicom's template again (its checks and lookups cost several times the parts)."""

    def __init__(
        self, group: hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations, parts: _Parts
    ) -> None:
        (self.container,) = group
        content = list(self.container.ContentSequence)
        where = {id(item): n for n, item in enumerate(parts.items())}
        self.content = content
        self.positions = {p: where[id(item)] for p, item in enumerate(content) if id(item) in where}
        # each part item found once in the container, none twice: else groups are not made like this one
        self.usable = sorted(self.positions.values()) == list(range(len(parts.items())))

    def like(self, parts: _Parts) -> Dataset:
        """A group holding ``parts`` (of this layout's shape) where the layout's group holds its own."""
        items = parts.items()
        content = [
            items[self.positions[p]] if p in self.positions else item for p, item in enumerate(self.content)
        ]
        group = Dataset(dict(self.container.items()))
        group[_CONTENT_SEQUENCE] = DataElement(_CONTENT_SEQUENCE, "SQ", PydicomSequence(content))
        return group


def _all_parts(
    context: DerivedContext,
    volumetry: Volumetry,
    seg: EncodedSeg,
    segments: Mapping[int, SegmentSpec],
) -> tuple[_Shared, list[_Parts]]:
    """The parts of the measurement group of each structure of ``volumetry``, in its order."""
    numbers = {label: number for number, label in seg.segment_labels.items()}
    missing = [s.label for s in volumetry.structures if s.label not in numbers or s.label not in segments]
    if missing:
        raise DerivedEncodingError(f"{context.where}: labels {missing} have no segment in the SEG")
    if not volumetry.structures:
        raise DerivedEncodingError(f"{context.where}: no structure to report")
    shared = _Shared.of(context)
    return shared, [
        _parts(context, shared, s, segments[s.label], seg, numbers[s.label]) for s in volumetry.structures
    ]


def measurement_groups(
    context: DerivedContext,
    volumetry: Volumetry,
    seg: EncodedSeg,
    segments: Mapping[int, SegmentSpec],
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    """One TID 1411 measurement group per structure of ``volumetry``, in its order, each made by
    highdicom's template."""
    shared, parts = _all_parts(context, volumetry, seg, segments)
    return [_group(shared, p) for p in parts]


def _other_groups(
    shared: _Shared, parts: Sequence[_Parts], first: hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
) -> list[Dataset]:
    """The container items of the groups of ``parts[1:]`` (``first``: highdicom's group of ``parts[0]``):
    each like the first group of its shape made by highdicom's template (:class:`_Layout`), or made by the
    template where no such group is or its layout is not usable."""
    layouts = {parts[0].shape(): _Layout(first, parts[0])}
    items: list[Dataset] = []
    for p in parts[1:]:
        layout = layouts.get(p.shape())
        if layout is not None and layout.usable:
            items.append(layout.like(p))
            continue
        group = _group(shared, p)
        if layout is None:
            layouts[p.shape()] = _Layout(group, p)
        items.extend(group)
    return items


def measurement_report(
    context: DerivedContext, groups: Sequence[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]
) -> hd.sr.MeasurementReport:
    """The TID 1500 content tree holding ``groups``, observed by the node as a device."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    options = context.options
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=context.uid(OutputKind.SR, "device", {"serial": options.device_serial_number}),
        name=lo(options.manufacturer_model_name),
        manufacturer_name=lo(options.manufacturer),
        model_name=lo(options.manufacturer_model_name),
        serial_number=lo(options.device_serial_number),
    )
    return hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device, observer_identifying_attributes=device
            )
        ),
        procedure_reported=codes.LN.MRIUnspecifiedBodyRegion,
        imaging_measurements=list(groups),
    )


def document_arguments(context: DerivedContext, seg: EncodedSeg) -> dict[str, Any]:
    """The arguments of highdicom's ``Comprehensive3DSR`` but the content: the evidence (every source
    image and the SEG), UIDs, numbers and descriptions, the coding scheme of the local codes."""
    import highdicom as hd

    return {
        "evidence": [
            context.source_header("comprehensive-3d-sr"),
            *context.volume.source_headers[1:],
            seg.dataset,
        ],
        "series_instance_uid": context.uid(OutputKind.SR, "series"),
        "series_number": context.series_number(SR_SERIES_NUMBER_OFFSET),
        "sop_instance_uid": context.uid(OutputKind.SR, "instance"),
        "instance_number": 1,
        "manufacturer": lo(context.options.manufacturer),
        "is_complete": True,
        "coding_schemes": [
            hd.coding_schemes.CodingSchemeIdentificationItem(
                designator=LOCAL_SCHEME, name="SegNode local codes", responsible_organization="SegNode"
            )
        ],
        "series_description": lo(f"{context.algorithm.name} {context.algorithm.task} volumes (AI)"),
    }


def _as_written(dataset: Dataset, seen: set[int]) -> None:
    """Mark ``dataset`` and the items of its sequences (each once) as written
    (:func:`~dicom_node.outputs.item_bytes.as_written`). Unmarked, pydicom's writer walks each item's
    subtree for ambiguous VRs (the SR has none: an element whose VR is still ambiguous would make the writer
    fail, not write it wrongly) once for each level above it, and would parse the Content Sequence held as
    bytes (:func:`_content_as_written`) to do so."""
    as_written(dataset)
    for elem in dataset.elements():
        if elem.VR == "SQ" and isinstance(elem.value, PydicomSequence):
            for child in elem.value:
                if id(child) not in seen:
                    seen.add(id(child))
                    _as_written(child, seen)


def _encoded_item(
    content: Dataset, encodings: Any, cache: dict[int, bytes], elements: dict[tuple[Any, ...], bytes]
) -> bytes:
    """A content item as pydicom writes it in a sequence (:mod:`~dicom_node.outputs.item_bytes`: items and
    sequences of defined length; text in the character set it inherits), encoded once however many groups
    hold it (``cache``: by item): its elements by pydicom's ``write_data_element``, those with a string or
    integer value once per tag, VR, value and character set (``elements``), its sequences' items by this
    function. An element whose VR is still ambiguous makes the writer fail (the SR has none)."""
    found = cache.get(id(content))
    if found is not None:
        return found
    encodings = content.get("SpecificCharacterSet", encodings)
    charset = encodings if isinstance(encodings, str) else tuple(encodings)

    def encode(tag: BaseTag, elem: Any, _: Dataset) -> bytes:
        if elem.VR == "SQ" and isinstance(elem.value, PydicomSequence):
            return sequence(tag, b"".join(_encoded_item(c, encodings, cache, elements) for c in elem.value))
        key = (tag, elem.VR, elem.value, charset) if type(elem.value) in _PLAIN else None
        data = None if key is None else elements.get(key)
        if data is None:
            fp = DicomBytesIO()
            fp.is_little_endian, fp.is_implicit_VR = True, False
            write_data_element(fp, elem, encodings)
            data = fp.getvalue()
            if key is not None:
                elements[key] = data
        return data

    cache[id(content)] = encoded = dataset_item(content, encode)
    return encoded


def _content_as_written(document: Dataset) -> None:
    """The document's Content Sequence held as the bytes it is written with (:func:`_encoded_item`): the
    groups share their algorithm identification, source series, evaluations and concepts, which pydicom's
    writer would encode again for each group; pydicom parses the bytes when the sequence is read."""
    encodings = document.get("SpecificCharacterSet", default_encoding)
    cache: dict[int, bytes] = {}
    elements: dict[tuple[Any, ...], bytes] = {}
    value = b"".join(_encoded_item(c, encodings, cache, elements) for c in document.ContentSequence)
    document[_CONTENT_SEQUENCE] = held_sequence(_CONTENT_SEQUENCE, value)


def encode_volumetry_sr(
    context: DerivedContext,
    volumetry: Volumetry,
    seg: EncodedSeg,
    segments: Mapping[int, SegmentSpec],
) -> EncodedSr:
    """The TID 1500 volumetry SR of one stack, whose SEG is ``seg`` (the report references its segments).

    highdicom's constructor makes the document around the report with its first measurement group; the
    other groups then join the report's Imaging Measurements container, which the document holds. The
    constructor copies its content tree into highdicom's object model and searches it twice for the
    instances it references, at the same cost for every group: the other groups reference the same SEG
    instance as the first, and the evidence lists every source image and the SEG whatever the content
    references. Each structure's own items (tracking identifier, referenced segment, finding site,
    volume, evaluations) are highdicom's; a group is highdicom's template around them for the first group
    of each shape, and that group's container with the structure's items in their places for the others
    (:class:`_Layout`). The document is the one the constructor makes from the whole report of template-made
    groups (tested), for a few times less work."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    shared, parts = _all_parts(context, volumetry, seg, segments)
    first = _group(shared, parts[0])
    arguments = document_arguments(context, seg)
    try:
        with warnings.catch_warnings():
            # highdicom puts one-component person names (copied from the source) into its warning text:
            # that would put patient names in the log.
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
            sr = hd.sr.Comprehensive3DSR(content=measurement_report(context, [first]), **arguments)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DerivedEncodingError(f"{context.where}: highdicom refused the volumetry SR: {exc}") from exc
    (container,) = hd.sr.utils.find_content_items(sr, name=codes.DCM.ImagingMeasurements)
    # the other groups join the copy of the first that the document holds (pydicom's sequence: they are
    # written, not searched through highdicom's object model)
    others = _other_groups(shared, parts, first)
    container[_CONTENT_SEQUENCE] = DataElement(
        _CONTENT_SEQUENCE, "SQ", PydicomSequence([*container.ContentSequence, *others])
    )
    # the document as a pydicom dataset (highdicom's object model of its content, ``sr.content``, holds the
    # first group alone)
    document = Dataset()
    document.update(sr)
    document.file_meta, document.preamble = sr.file_meta, sr.preamble
    set_equipment(document, context.options)
    _content_as_written(document)
    _as_written(document, set())
    logger.info("encoded volumetry SR for %s: %d structures", context.where, len(parts))
    return EncodedSr(document, arguments["series_instance_uid"], arguments["sop_instance_uid"])
