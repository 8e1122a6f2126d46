"""What the segments of a SEG say: coded concepts, the structure catalog's descriptions of the model
labels, the Algorithm Identification, and the highdicom Segment Descriptions built from them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from dicom_node.outputs.seg_options import lo_value

if TYPE_CHECKING:
    import highdicom as hd


@dataclass(frozen=True)
class CodeTriple:
    """A coded concept: code value, coding scheme designator, code meaning (e.g. SNOMED CT)."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class SegmentSpec:
    """How one model label is described in the SEG (from the structure catalog)."""

    label: int
    name: str
    category: CodeTriple
    type: CodeTriple
    #: Laterality (SNOMED CT Left / Right) or another type modifier; ``None`` when the structure has none.
    modifier: CodeTriple | None
    #: Recommended display colour, sRGB 0-255 (encoded as CIELab in the SEG).
    rgb: tuple[int, int, int]
    #: Anatomic Region (with its modifier) where the catalog gives one.
    anatomic_region: CodeTriple | None = None
    anatomic_region_modifier: CodeTriple | None = None


def segments_from_catalog(task: str) -> dict[int, SegmentSpec]:
    """Task label -> segment description, from the structure catalog (``inference.catalog``)."""
    from inference import catalog

    def triple(code: Any) -> CodeTriple | None:
        return None if code is None else CodeTriple(str(code.value), str(code.scheme), str(code.meaning))

    out: dict[int, SegmentSpec] = {}
    for label, structure in catalog.get_catalog(task).items():
        category = triple(structure.category)
        type_ = triple(structure.type)
        assert category is not None and type_ is not None
        out[int(label)] = SegmentSpec(
            label=int(label),
            name=str(structure.display_name),
            category=category,
            type=type_,
            modifier=triple(structure.type_modifier),
            rgb=(int(structure.rgb[0]), int(structure.rgb[1]), int(structure.rgb[2])),
            anatomic_region=triple(structure.anatomic_region),
            anatomic_region_modifier=triple(structure.anatomic_region_modifier),
        )
    return out


@dataclass(frozen=True)
class AlgorithmInfo:
    """What produced the label map (Algorithm Identification of every segment)."""

    #: Algorithm name, e.g. ``"TotalSegmentator"``.
    name: str
    #: The task, e.g. ``"total_mr"``.
    task: str
    #: Version of the model weights / algorithm, e.g. ``"2.18.0"``.
    version: str
    #: Further parameters that change the result (``fast``, ``roi_subset``...), written as Algorithm
    #: Parameters and part of the UID derivation.
    parameters: Mapping[str, str] = field(default_factory=dict)


def _code(triple: CodeTriple) -> hd.sr.CodedConcept:
    import highdicom as hd

    return hd.sr.CodedConcept(value=triple.value, scheme_designator=triple.scheme, meaning=triple.meaning)


def segment_descriptions(
    present: Sequence[int], segments: Mapping[int, SegmentSpec], algorithm: AlgorithmInfo
) -> list[hd.seg.SegmentDescription]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm_id = hd.AlgorithmIdentificationSequence(
        name=f"{algorithm.name} {algorithm.task}"[:64],
        version=algorithm.version[:64],
        family=codes.DCM.ArtificialIntelligence,
        parameters=dict(algorithm.parameters) or None,
    )
    out = []
    for number, label in enumerate(present, start=1):
        spec = segments[label]
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=lo_value(spec.name),
            segmented_property_category=_code(spec.category),
            segmented_property_type=_code(spec.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm_id,
            display_color=hd.color.CIELabColor.from_rgb(*spec.rgb),
            anatomic_regions=None if spec.anatomic_region is None else [_code(spec.anatomic_region)],
        )
        if spec.anatomic_region_modifier is not None:
            region = description.AnatomicRegionSequence[0]
            region.AnatomicRegionModifierSequence = [_code(spec.anatomic_region_modifier)]
        if spec.modifier is not None:
            type_item = description.SegmentedPropertyTypeCodeSequence[0]
            modifier = Dataset()
            modifier.CodeValue = spec.modifier.value
            modifier.CodingSchemeDesignator = spec.modifier.scheme
            modifier.CodeMeaning = spec.modifier.meaning
            type_item.SegmentedPropertyTypeModifierCodeSequence = [modifier]
        out.append(description)
    return out
