"""RT Structure Set for radiotherapy planning systems: one ROI per structure, closed planar contours per
slice, traced from the label map by OpenCV.

Contours: ``cv2.findContours`` (border following, all contours) on each structure's mask of a slice scaled
up 3 times (see :mod:`.contour_trace`): the polygons run a third of a pixel inside the pixel edges, so that
rasterised back (pixel centres inside, even-odd rule) they give the mask exactly; pixels touching only at a
corner are kept apart, so every polygon is simple; straight runs keep only their end points; a single pixel
gives 4 points, so every polygon has at least 3. Points are mapped to patient coordinates (LPS, mm)
through the Volume affine and written with 0.001 mm resolution (:mod:`.contour_text`: on an axial, sagittal
or coronal stack each coordinate's text is formatted once per index). Each contour references the source
image of its slice. Holes are separate contours of the same ROI: planning systems combine the contours of
one plane with the even-odd rule.

ROI names, display colours and codes (Segmented Property Category, RT ROI Identification Code with the
laterality as Segmented Property Type Modifier, Anatomic Region) come from the structure catalog; the
interpreted type is ORGAN, the generation algorithm AUTOMATIC. Patient and study attributes come through the
sanitiser; UIDs are derived like those of the SEG.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.charset import encode_string
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID, RTStructureSetStorage

from conversion.volume import SliceRef
from dicom_node.outputs.contour_text import ContourText
from dicom_node.outputs.contour_trace import SCALE, Scratch, structure_polygons
from dicom_node.outputs.derived import (
    NOT_FOR_DIAGNOSIS,
    DerivedContext,
    DerivedEncodingError,
    OutputKind,
    labels_present,
    lo,
    set_creation_time,
    set_equipment,
    set_file_meta,
)
from dicom_node.outputs.item_bytes import as_written, element, held_sequence, item
from dicom_node.outputs.label_layout import LabelLayout, label_layout
from dicom_node.outputs.seg_segments import CodeTriple, SegmentSpec

logger = logging.getLogger(__name__)

#: Series Number offset of the RTSTRUCT (SEG: 1000, SR: 2000).
RTSTRUCT_SERIES_NUMBER_OFFSET = 3000
_CONTOUR_DATA = Tag(0x3006, 0x0050)
_CONTOURS = Tag(0x3006, 0x0040)
_CONTOUR_IMAGES, _GEOMETRIC_TYPE = Tag(0x3006, 0x0016), Tag(0x3006, 0x0042)
_REFERENCED_FRAMES, _REFERENCED_STUDIES = Tag(0x3006, 0x0010), Tag(0x3006, 0x0012)
_REFERENCED_SERIES = Tag(0x3006, 0x0014)
_STRUCTURE_SET_ROIS, _ROI_CONTOURS, _OBSERVATIONS = (
    Tag(0x3006, 0x0020),
    Tag(0x3006, 0x0039),
    Tag(0x3006, 0x0080),
)
_NUMBER_OF_POINTS, _CONTOUR_NUMBER = Tag(0x3006, 0x0046), Tag(0x3006, 0x0048)
#: Detached Study Management SOP Class: the value the RT Referenced Study Sequence takes.
_STUDY_COMPONENT_CLASS = "1.2.840.10008.3.1.2.3.1"


@dataclass(frozen=True)
class EncodedRtstruct:
    dataset: Dataset
    series_instance_uid: str
    sop_instance_uid: str
    #: ROI number -> model label.
    roi_labels: Mapping[int, int]


@lru_cache(maxsize=4096)
def _integer_string(tag: int, value: int) -> bytes:
    """An IS element (a count, a number), encoded once per tag and value."""
    return element(tag, "IS", str(value))


def _image_ref(ref: SliceRef) -> bytes:
    """An item (encoded) referencing the source image of the slice ``ref``."""
    body = element(0x00081150, "UI", ref.sop_class_uid) + element(0x00081155, "UI", ref.sop_instance_uid)
    if ref.frame_number is not None:
        body += element(0x00081160, "IS", str(int(ref.frame_number)))
    return item(body)


def _contour_image_sequence(ref: SliceRef) -> bytes:
    """The Contour Image Sequence of a contour on the slice ``ref`` (one set of bytes per slice serves
    every contour on it)."""
    return element(_CONTOUR_IMAGES, "SQ", _image_ref(ref))


_CLOSED_PLANAR = element(_GEOMETRIC_TYPE, "CS", "CLOSED_PLANAR")
_GENERATED_AUTOMATICALLY = element(0x30060036, "CS", "AUTOMATIC")
_ORGAN, _NO_INTERPRETER = element(0x300600A4, "CS", "ORGAN"), element(0x300600A6, "PN", "")


def _contour_items(
    context: DerivedContext,
    text: ContourText,
    traced: tuple[npt.NDArray[np.intp], list[int], npt.NDArray[np.int32]],
    box: tuple[slice, ...],
    refs: dict[int, bytes],
) -> list[bytes]:
    """Contour Sequence items (encoded) of one structure: ``traced`` its contours on the slices of its
    bounding box ``box`` (slice, row, column), as :func:`~dicom_node.outputs.contour_trace.structure_polygons`
    gives them; ``text`` writes the points' coordinates; ``refs`` the encoded Contour Image Sequence of each
    slice (one set of bytes per slice serves every contour on it), filled as needed."""
    found, lengths, xy = traced
    if not lengths:
        return []
    first_slice, first_row, first_column = (int(b.start) for b in box)
    slices = found + first_slice
    columns = xy[:, 0].astype(np.intp) + SCALE * first_column
    rows = xy[:, 1].astype(np.intp) + SCALE * first_row
    data = text.contours(columns, rows, np.repeat(slices, lengths), lengths)
    items: list[bytes] = []
    for k, length, values in zip(slices.tolist(), lengths, data, strict=True):
        if k not in refs:
            refs[k] = _contour_image_sequence(context.volume.slice_refs[k])
        body = b"".join(
            (
                refs[k],
                _CLOSED_PLANAR,
                _integer_string(_NUMBER_OF_POINTS, length),
                _integer_string(_CONTOUR_NUMBER, len(items) + 1),
                element(_CONTOUR_DATA, "DS", values),
            )
        )
        items.append(item(body))
    return items


def _all_contours(
    context: DerivedContext, label_map: npt.NDArray[Any], last: int, layout: LabelLayout | None = None
) -> dict[int, list[bytes]]:
    """Label -> its Contour Sequence items (encoded), slice by slice, for the labels up to ``last``: the
    label map in slice order (``layout``, where the caller has made it for the stack, else made here:
    :func:`~dicom_node.outputs.label_layout.label_layout`), each structure cut out of it by its bounding
    box and traced, in one call, on the slices of that box where it has pixels."""
    if layout is None:
        layout = label_layout(label_map)
    layout.check(label_map, context.where)
    text = ContourText(context.volume.affine, context.volume.shape)
    out: dict[int, list[bytes]] = {}
    refs: dict[int, bytes] = {}
    scratch = Scratch()
    for label, box in enumerate(layout.boxes_up_to(last), start=1):
        if box is None:
            continue
        traced = structure_polygons(layout.ordered, box, label, scratch)
        out[label] = _contour_items(context, text, traced, box, refs)
    return out


def _text(tag: int, vr: str, value: str, encodings: list[str]) -> bytes:
    """A text element (SH, LO) as pydicom writes it in the character set ``encodings`` (each value of a
    multi-valued text encoded by itself)."""
    return element(tag, vr, b"\\".join(encode_string(v, encodings) for v in value.split("\\")))


def _code(code: CodeTriple, encodings: list[str], *modifier: tuple[int, CodeTriple | None]) -> bytes:
    """A code sequence item (encoded), with the code sequence of a modifier (its tag, its code) where the
    code has one."""
    body = b"".join(
        (
            _text(0x00080100, "SH", code.value, encodings),
            _text(0x00080102, "SH", code.scheme, encodings),
            _text(0x00080104, "LO", code.meaning, encodings),
        )
    )
    for tag, value in modifier:
        if value is not None:
            body += element(tag, "SQ", _code(value, encodings))
    return item(body)


def _roi(roi: int, frame_of_reference: str, name: str, description: str, encodings: list[str]) -> bytes:
    """A Structure Set ROI Sequence item (encoded)."""
    body = b"".join(
        (
            _integer_string(0x30060022, roi),
            element(0x30060024, "UI", frame_of_reference),
            _text(0x30060026, "LO", name, encodings),
            _GENERATED_AUTOMATICALLY,
            _text(0x30060038, "LO", description, encodings),
        )
    )
    return item(body)


def _roi_contour(spec: SegmentSpec, roi: int, contours: list[bytes]) -> bytes:
    """An ROI Contour Sequence item (encoded): display colour, Contour Sequence, ROI number."""
    colour = element(0x3006002A, "IS", "\\".join(str(int(v)) for v in spec.rgb))
    return item(colour + element(_CONTOURS, "SQ", b"".join(contours)) + _integer_string(0x30060084, roi))


def _observation(spec: SegmentSpec, roi: int, encodings: list[str]) -> bytes:
    """An RT ROI Observations Sequence item (encoded): the structure's codes from the catalog."""
    parts = []
    if spec.anatomic_region is not None:
        region = _code(spec.anatomic_region, encodings, (0x00082220, spec.anatomic_region_modifier))
        parts.append(element(0x00082218, "SQ", region))
    identification = _code(spec.type, encodings, (0x00620011, spec.modifier))
    parts += [
        element(0x00620003, "SQ", _code(spec.category, encodings)),
        _integer_string(0x30060082, roi),
        _integer_string(0x30060084, roi),
        element(0x30060086, "SQ", identification),
        _ORGAN,
        _NO_INTERPRETER,
    ]
    return item(b"".join(parts))


def _referenced_frame_of_reference(context: DerivedContext) -> RawDataElement:
    """The Referenced Frame of Reference Sequence (encoded, as pydicom writes it): the source series with a
    Contour Image Sequence item per slice of the stack."""
    volume = context.volume
    images = b"".join(_image_ref(ref) for ref in volume.slice_refs)
    series = element(0x0020000E, "UI", volume.series_instance_uid) + element(_CONTOUR_IMAGES, "SQ", images)
    study = b"".join(
        (
            element(0x00081150, "UI", _STUDY_COMPONENT_CLASS),
            element(0x00081155, "UI", volume.study_instance_uid),
            element(_REFERENCED_SERIES, "SQ", item(series)),
        )
    )
    frame = element(0x00200052, "UI", volume.frame_of_reference_uid) + element(
        _REFERENCED_STUDIES, "SQ", item(study)
    )
    return held_sequence(_REFERENCED_FRAMES, item(frame))


def _header(context: DerivedContext, series_uid: str, sop_uid: str) -> Dataset:
    ds = context.patient_and_study("rt-structure-set")
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = context.series_number(RTSTRUCT_SERIES_NUMBER_OFFSET)
    ds.SeriesDescription = lo(f"{context.algorithm.name} {context.algorithm.task} contours (AI)")
    ds.OperatorsName = ""
    set_equipment(ds, context.options)
    set_creation_time(ds)
    # Frame of Reference module (part of the RT Structure Set IOD since 2021).
    ds.FrameOfReferenceUID = context.volume.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = 1
    ds.StructureSetLabel = lo(context.algorithm.task.upper(), 16)
    ds.StructureSetName = lo(f"{context.algorithm.name} {context.algorithm.task}")
    ds.StructureSetDescription = f"{NOT_FOR_DIAGNOSIS}. Automatic contours, to be reviewed."
    ds.StructureSetDate, ds.StructureSetTime = ds.ContentDate, ds.ContentTime
    for keyword in ("ContentDate", "ContentTime"):
        delattr(ds, keyword)
    ds[_REFERENCED_FRAMES] = _referenced_frame_of_reference(context)
    set_file_meta(ds, RTStructureSetStorage, UID(sop_uid))
    return ds


def encode_rtstruct(
    context: DerivedContext,
    label_map: npt.NDArray[np.integer[Any]],
    segments: Mapping[int, SegmentSpec],
    counted: Sequence[int] | None = None,
    layout: LabelLayout | None = None,
) -> EncodedRtstruct:
    """The RT Structure Set of one stack: one ROI per label present in ``label_map``; ``counted``: those
    labels where the caller has them (see :func:`~dicom_node.outputs.derived.labels_present`); ``layout``:
    the label map in slice order with its labels' boxes, where the caller has made it for the stack's
    outputs (:func:`~dicom_node.outputs.label_layout.label_layout`)."""
    volume = context.volume
    present: Sequence[int] = labels_present(context, label_map, segments, counted)
    if not present:
        raise DerivedEncodingError(f"{context.where}: the label map is empty: no structure to contour")
    series_uid = context.uid(OutputKind.RTSTRUCT, "series")
    sop_uid = context.uid(OutputKind.RTSTRUCT, "instance")
    ds = _header(context, series_uid, sop_uid)
    roi_labels = {roi: label for roi, label in enumerate(present, start=1)}
    traced = _all_contours(context, np.asarray(label_map), max(present), layout)
    # the ROI sequences held as their bytes, text in the dataset's character set
    encodings = ds._character_set
    encodings = [encodings] if isinstance(encodings, str) else list(encodings)
    description = lo(f"{context.algorithm.name} {context.algorithm.task}")
    rois, contours, observations = [], [], []
    for roi, label in roi_labels.items():
        spec = segments[label]
        rois.append(_roi(roi, volume.frame_of_reference_uid, lo(spec.name), description, encodings))
        contours.append(_roi_contour(spec, roi, traced[label]))
        observations.append(_observation(spec, roi, encodings))
    ds[_STRUCTURE_SET_ROIS] = held_sequence(_STRUCTURE_SET_ROIS, b"".join(rois))
    ds[_ROI_CONTOURS] = held_sequence(_ROI_CONTOURS, b"".join(contours))
    ds[_OBSERVATIONS] = held_sequence(_OBSERVATIONS, b"".join(observations))
    # the dataset marked as written: else pydicom's writer walks it all for ambiguous VRs (there are none),
    # parsing the sequences held as bytes on the way
    as_written(ds)
    logger.info("encoded RTSTRUCT for %s: %d ROIs", context.where, len(rois))
    return EncodedRtstruct(ds, series_uid, sop_uid, roi_labels)
