"""The RT Structure Set (dicom_node.outputs.rtstruct): valid for dciodvfy; every contour closed, planar
(on its source slice), of at least 3 points and simple (shapely); ROI names, colours and codes from the
catalog; and the contours rasterised back (scikit-image, even-odd rule per plane) give Dice >= 0.95 per
structure against the label map, on blocks and spheres and on irregular shapes with holes cut from the
image itself."""

from __future__ import annotations

import copy
import dataclasses
from collections import defaultdict
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
import shapely
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_data_element, write_dataset
from skimage.draw import polygon as fill_polygon

from conversion.volume import Volume
from dicom_node.outputs import volumetry
from dicom_node.outputs.contour_text import ContourText
from dicom_node.outputs.derived import DerivedContext, DerivedEncodingError
from dicom_node.outputs.label_layout import label_layout
from dicom_node.outputs.rtstruct import encode_rtstruct
from dicom_node.outputs.seg import AlgorithmInfo, SegOptions, segments_from_catalog
from dicom_node.outputs.seg_segments import CodeTriple, SegmentSpec
from dicom_node.outputs.validation import validate_with_dciodvfy
from tests.dicom_node.seg_support import synthetic_label_map, volumes_of
from tests.support.paths import PD_TRA, T2_COR, T2_SAG, TEST_MRI

SERIES = {
    "axial": PD_TRA,
    "sagittal": T2_SAG,
    "coronal-oblique": T2_COR,
}
#: An enhanced MR file (Philips, 2 x 32 frames): its slices are frames of one instance.
ENHANCED_MULTI_FRAME = TEST_MRI / "dcm_qa_enh" / "Philips_EnhancedMR_fMAP"
ALGORITHM = AlgorithmInfo("TotalSegmentator", "total_mr", "2.0")
SEGMENTS = segments_from_catalog("total_mr")
#: Dice of the rasterised contours against the label map, per structure (Done means of issue 13).
MIN_DICE = 0.95


def irregular_label_map(volume: Volume) -> npt.NDArray[np.uint8]:
    """Three labels from intensity bands of the (median-filtered) image itself: ragged shapes, holes, single
    pixels, pixels that touch only at a corner."""
    from scipy.ndimage import median_filter

    image = median_filter(volume.voxels, size=(3, 3, 1))
    low, mid, high = np.percentile(image, [40, 70, 90])
    out = np.zeros(volume.shape, dtype=np.uint8)
    out[(image > low) & (image <= mid)] = 5  # liver
    out[(image > mid) & (image <= high)] = 17  # prostate
    out[image > high] = 22  # heart
    return out


MAPS = {
    "blocks": lambda v: synthetic_label_map(v.shape, [1, 2, 3, 5, 17]),
    "irregular": irregular_label_map,
}


#: Blocks on every series; the irregular map (thousands of contours) on the axial series only.
CASES = [(series, "blocks") for series in SERIES] + [("axial", "irregular")]


@pytest.fixture(scope="module", params=CASES, ids=lambda p: f"{p[0]}-{p[1]}")
def case(request: pytest.FixtureRequest) -> tuple[Volume, npt.NDArray[np.uint8], Dataset]:
    series, kind = request.param
    volume = volumes_of(SERIES[series])[0]
    label_map = MAPS[kind](volume)
    encoded = encode_rtstruct(DerivedContext(volume, ALGORITHM, SegOptions()), label_map, SEGMENTS)
    return volume, label_map, encoded.dataset


def contour_points(contour: Dataset, volume: Volume) -> npt.NDArray[np.float64]:
    """(column, row, slice) voxel coordinates of a contour's points."""
    points = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1)
    voxel: npt.NDArray[np.float64] = (np.linalg.inv(volume.affine) @ homogeneous.T)[:3].T
    return voxel


def rasterised(ds: Dataset, volume: Volume) -> dict[int, npt.NDArray[np.bool_]]:
    """ROI number -> mask (volume shape) from the contours, even-odd within each plane."""
    slices = {ref.sop_instance_uid: k for k, ref in enumerate(volume.slice_refs)}
    ni, nj, _ = volume.shape
    out: dict[int, npt.NDArray[np.bool_]] = defaultdict(lambda: np.zeros(volume.shape, dtype=bool))
    for roi in ds.ROIContourSequence:
        mask = out[int(roi.ReferencedROINumber)]
        for contour in roi.ContourSequence:
            k = slices[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            voxel = contour_points(contour, volume)
            rows, columns = fill_polygon(voxel[:, 1], voxel[:, 0], shape=(nj, ni))
            mask[columns, rows, k] ^= True
    return out


def test_rtstruct_is_valid(tmp_path: Path, case: tuple[Volume, Any, Dataset]) -> None:
    path = tmp_path / "rtstruct.dcm"
    case[2].save_as(path, enforce_file_format=True)
    validate_with_dciodvfy(path)  # raises on any Error line
    assert pydicom.dcmread(path).SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"


def test_contours_are_closed_planar_simple_polygons(case: tuple[Volume, Any, Dataset]) -> None:
    volume, _, ds = case
    slices = {ref.sop_instance_uid: k for k, ref in enumerate(volume.slice_refs)}
    count = 0
    for roi in ds.ROIContourSequence:
        for contour in roi.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            voxel = contour_points(contour, volume)
            assert len(voxel) == contour.NumberOfContourPoints >= 3
            k = slices[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            assert np.allclose(voxel[:, 2], k, atol=1e-3), "a contour leaves the plane of its image"
            ring = shapely.LinearRing(voxel[:, :2])
            assert ring.is_simple, f"ROI {roi.ReferencedROINumber}: self-intersecting contour on slice {k}"
            count += 1
    assert count > 0


def test_rasterised_contours_give_the_label_map_back(
    case: tuple[Volume, npt.NDArray[np.uint8], Dataset],
) -> None:
    volume, label_map, ds = case
    masks = rasterised(ds, volume)
    rois = {int(item.ROINumber): item for item in ds.StructureSetROISequence}
    labels = [int(v) for v in np.unique(label_map) if v]
    assert len(rois) == len(labels)
    for (number, item), label in zip(sorted(rois.items()), labels, strict=True):
        truth = label_map == label
        mask = masks[number]
        dice = 2 * int((mask & truth).sum()) / (int(mask.sum()) + int(truth.sum()))
        assert dice >= MIN_DICE, f"{item.ROIName}: Dice {dice:.4f}"
        assert item.ROIName == SEGMENTS[label].name


def test_names_colours_and_codes_from_the_catalog(
    case: tuple[Volume, npt.NDArray[np.uint8], Dataset],
) -> None:
    _, label_map, ds = case
    labels = [int(v) for v in np.unique(label_map) if v]
    for label, roi, contour, observation in zip(
        labels, ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence, strict=True
    ):
        spec = SEGMENTS[label]
        assert roi.ROIName == spec.name and roi.ROIGenerationAlgorithm == "AUTOMATIC"
        assert [int(v) for v in contour.ROIDisplayColor] == list(spec.rgb)
        code = observation.RTROIIdentificationCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator) == (spec.type.value, spec.type.scheme)
        modifier = code.get("SegmentedPropertyTypeModifierCodeSequence")
        assert (modifier[0].CodeValue if modifier else None) == (
            spec.modifier.value if spec.modifier else None
        )
        assert observation.SegmentedPropertyCategoryCodeSequence[0].CodeValue == spec.category.value
        assert observation.RTROIInterpretedType == "ORGAN"


def test_uids_are_deterministic_and_the_frame_of_reference_is_the_source(
    case: tuple[Volume, npt.NDArray[np.uint8], Dataset],
) -> None:
    volume, label_map, ds = case
    again = encode_rtstruct(DerivedContext(volume, ALGORITHM, SegOptions()), label_map, SEGMENTS).dataset
    assert (again.SeriesInstanceUID, again.SOPInstanceUID) == (ds.SeriesInstanceUID, ds.SOPInstanceUID)
    reference = ds.ReferencedFrameOfReferenceSequence[0]
    assert reference.FrameOfReferenceUID == volume.frame_of_reference_uid == ds.FrameOfReferenceUID
    series = reference.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == volume.series_instance_uid
    assert len(series.ContourImageSequence) == volume.shape[2]
    assert ds.StudyInstanceUID == volume.study_instance_uid


def image_refs(items: Any) -> list[tuple[str, str, int | None]]:
    return [
        (
            i.ReferencedSOPClassUID,
            i.ReferencedSOPInstanceUID,
            int(i.ReferencedFrameNumber) if "ReferencedFrameNumber" in i else None,
        )
        for i in items
    ]


@pytest.mark.parametrize("series", ["axial", "enhanced multi-frame"])
def test_the_header_references_each_source_image_also_written_in_implicit_vr(series: str) -> None:
    """The Referenced Frame of Reference Sequence (held as its bytes) lists the source image (and frame) of
    every slice of the stack in order, under the study and series; written in implicit VR little endian (a
    peer that accepts no other transfer syntax) it reads back the same, contours included."""
    volume = volumes_of(SERIES["axial"] if series == "axial" else ENHANCED_MULTI_FRAME)[0]
    expected = [(r.sop_class_uid, r.sop_instance_uid, r.frame_number) for r in volume.slice_refs]
    assert (expected[0][2] is None) == (series == "axial")
    label_map = synthetic_label_map(volume.shape, [1, 2, 3])
    ds = encode_rtstruct(DerivedContext(volume, ALGORITHM, SegOptions()), label_map, SEGMENTS).dataset
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = True, True
    write_dataset(fp, ds)
    implicit = read_dataset(BytesIO(fp.getvalue()), is_implicit_VR=True, is_little_endian=True)
    for read in (ds, implicit):
        reference = read.ReferencedFrameOfReferenceSequence[0]
        assert reference.FrameOfReferenceUID == volume.frame_of_reference_uid
        study = reference.RTReferencedStudySequence[0]
        assert study.ReferencedSOPClassUID == "1.2.840.10008.3.1.2.3.1"
        assert study.ReferencedSOPInstanceUID == volume.study_instance_uid
        series_item = study.RTReferencedSeriesSequence[0]
        assert series_item.SeriesInstanceUID == volume.series_instance_uid
        assert image_refs(series_item.ContourImageSequence) == expected
        contours = [c for roi in read.ROIContourSequence for c in roi.ContourSequence]
        assert contours and all(image_refs(c.ContourImageSequence)[0] in expected for c in contours)
    assert [list(c.ContourData) for roi in implicit.ROIContourSequence for c in roi.ContourSequence] == [
        list(c.ContourData) for roi in ds.ROIContourSequence for c in roi.ContourSequence
    ]


def code_item(code: CodeTriple) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme, code.meaning
    return item


def roi_items_as_datasets(ds: Dataset, spec: SegmentSpec, description: str) -> dict[int, Dataset]:
    """The Structure Set ROI, ROI Contour and RT ROI Observations items of ROI 1 (``spec``) built as
    pydicom datasets, the Contour Sequence taken from ``ds``."""
    roi = Dataset()
    roi.ROINumber, roi.ReferencedFrameOfReferenceUID = 1, ds.FrameOfReferenceUID
    roi.ROIName, roi.ROIGenerationAlgorithm, roi.ROIGenerationDescription = (
        spec.name,
        "AUTOMATIC",
        description,
    )
    contour = Dataset()
    contour.ROIDisplayColor, contour.ReferencedROINumber = list(spec.rgb), 1
    contour.ContourSequence = ds.ROIContourSequence[0].ContourSequence
    observation = Dataset()
    observation.ObservationNumber = observation.ReferencedROINumber = 1
    observation.SegmentedPropertyCategoryCodeSequence = [code_item(spec.category)]
    identification = code_item(spec.type)
    if spec.modifier is not None:
        identification.SegmentedPropertyTypeModifierCodeSequence = [code_item(spec.modifier)]
    observation.RTROIIdentificationCodeSequence = [identification]
    if spec.anatomic_region is not None:
        region = code_item(spec.anatomic_region)
        if spec.anatomic_region_modifier is not None:
            region.AnatomicRegionModifierSequence = [code_item(spec.anatomic_region_modifier)]
        observation.AnatomicRegionSequence = [region]
    observation.RTROIInterpretedType, observation.ROIInterpreter = "ORGAN", ""
    return {0x30060020: roi, 0x30060039: contour, 0x30060080: observation}


def encoded(element: DataElement | RawDataElement, encodings: Any) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_data_element(fp, element, encodings)
    return bytes(fp.getvalue())


@pytest.mark.parametrize(
    ("charset", "name", "meaning"),
    [
        (None, "Liver", "Liver"),
        ("ISO_IR 100", "Leber (größter Teil)", "Lebergewebe\\Hepar"),
        ("ISO_IR 192", "肝臓 – Leber", "Leber\\肝臓"),
        ("ISO_IR 144", "Печень", "печень\\Liver"),
    ],
    ids=["none", "latin-1", "utf-8", "cyrillic"],
)
def test_roi_sequences_held_as_bytes_are_those_pydicom_writes(
    charset: str | None, name: str, meaning: str
) -> None:
    """The Structure Set ROI, ROI Contour and RT ROI Observations Sequences (held as their bytes) are
    those pydicom writes for the same items built as datasets, text in the source's character set: names
    and code meanings outside ASCII, a code meaning of two values, a modifier and an anatomic region."""
    volume = copy.deepcopy(volumes_of(SERIES["axial"])[0])
    if charset is None:
        del volume.first_header.SpecificCharacterSet
    else:
        volume.first_header.SpecificCharacterSet = charset
    base = SEGMENTS[5]
    spec = dataclasses.replace(
        base,
        name=name,
        type=CodeTriple(base.type.value, base.type.scheme, meaning),
        modifier=CodeTriple("7771000", "SCT", "Left"),
        anatomic_region=CodeTriple("818987002", "SCT", meaning),
        anatomic_region_modifier=CodeTriple("24028007", "SCT", "Right"),
    )
    label_map = synthetic_label_map(volume.shape, [5])
    author = f"{name} AI"  # in the character set
    algorithm = AlgorithmInfo(author, "total_mr", "2.0")
    ds = encode_rtstruct(DerivedContext(volume, algorithm, SegOptions()), label_map, {5: spec}).dataset
    declared = ds.get("SpecificCharacterSet")
    assert (declared if declared is None or isinstance(declared, str) else "\\".join(declared)) == charset
    encodings = ds.get("SpecificCharacterSet", "iso8859")
    for tag, item in roi_items_as_datasets(ds, spec, f"{author} total_mr").items():
        assert encoded(ds.get_item(tag), encodings) == encoded(DataElement(tag, "SQ", [item]), encodings)
    assert ds.StructureSetROISequence[0].ROIName == name
    read = ds.RTROIObservationsSequence[0].RTROIIdentificationCodeSequence[0].CodeMeaning
    assert (read if isinstance(read, str) else "\\".join(read)) == meaning


def test_an_empty_label_map_is_refused() -> None:
    volume = volumes_of(SERIES["axial"])[0]
    with pytest.raises(DerivedEncodingError, match="the label map is empty"):
        encode_rtstruct(
            DerivedContext(volume, ALGORITHM, SegOptions()), np.zeros(volume.shape, np.uint8), SEGMENTS
        )


def test_labels_counted_by_the_volumetry_give_the_same_structure_set(
    case: tuple[Volume, npt.NDArray[np.uint8], Dataset],
) -> None:
    volume, label_map, ds = case
    counted = volumetry.measure(volume, label_map, "total_mr", volumetry.catalog_names("total_mr")).labels
    again = encode_rtstruct(DerivedContext(volume, ALGORITHM, SegOptions()), label_map, SEGMENTS, counted)
    assert [r.ROIName for r in again.dataset.StructureSetROISequence] == [
        r.ROIName for r in ds.StructureSetROISequence
    ]

    def contours(rt: Dataset) -> list[list[list[float]]]:
        return [[list(c.ContourData) for c in item.ContourSequence] for item in rt.ROIContourSequence]

    assert contours(again.dataset) == contours(ds)


def test_a_counted_label_without_a_catalog_entry_is_refused() -> None:
    volume = volumes_of(SERIES["axial"])[0]
    label_map = synthetic_label_map(volume.shape, [1, 2])
    with pytest.raises(DerivedEncodingError, match=r"labels \[99\] have no catalog entry"):
        encode_rtstruct(DerivedContext(volume, ALGORITHM, SegOptions()), label_map, SEGMENTS, [1, 2, 99])


@pytest.mark.parametrize("layout", ["C uint8", "Fortran uint8", "C uint16"])
def test_structure_boxes_are_those_of_find_objects(layout: str) -> None:
    """The boxes the structures are cut out by (8-bit histograms for a C-ordered 8-bit map, find_objects
    for any other) are scipy's find_objects boxes: labels absent, single voxels, on every face."""
    from scipy import ndimage

    rng = np.random.default_rng(5)
    label_map = np.zeros((37, 29, 11), dtype=np.uint8)
    for label in range(1, 12):
        lo = rng.integers(0, (37, 29, 11))
        hi = np.minimum(lo + rng.integers(1, 9, 3), (37, 29, 11))
        label_map[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = label
    label_map[0, 5, 3] = label_map[36, 28, 10] = 14  # one label on opposite corners; 12 and 13 absent
    label_map[17, 0, 0] = 15
    if layout == "Fortran uint8":
        label_map = np.asfortranarray(label_map)
    elif layout == "C uint16":
        label_map = label_map.astype(np.uint16)
    layout = label_layout(label_map)
    assert layout.boxes_up_to(15) == list(ndimage.find_objects(layout.ordered, max_label=15))


def random_points(shape: tuple[int, ...], count: int) -> tuple[npt.NDArray[np.intp], ...]:
    """Sub-pixel column and row indices (the whole range, first and last included) and slices of ``count``
    points on a stack of ``shape``."""
    rng = np.random.default_rng(11)
    columns, rows, slices = shape
    points = [
        rng.integers(0, 3 * columns, count),
        rng.integers(0, 3 * rows, count),
        rng.integers(0, slices, count),
    ]
    for axis, top in enumerate((3 * columns, 3 * rows, slices)):
        points[axis][:2] = (0, top - 1)
    return tuple(np.asarray(p, dtype=np.intp) for p in points)


#: An axial stack whose affine has negative steps and a zero offset (negative zeros on the way).
AXIAL_FLIPPED = np.array([[-0.7, 0, 0, 0.0], [0, -0.9, 0, 35.1], [0, 0, 2.5, -0.35], [0, 0, 0, 1]])


@pytest.mark.parametrize("series", ["sagittal", "flipped axial"])
def test_contour_text_by_lookup_is_the_text_of_the_formula(series: str) -> None:
    """Where each patient axis follows one stack axis (sagittal, axial), the texts looked up per index are
    those each value formatted by itself gives; split into contours the same way."""
    if series == "sagittal":
        volume = volumes_of(SERIES[series])[0]
        affine, shape = volume.affine, volume.shape
    else:
        affine, shape = AXIAL_FLIPPED, (200, 180, 30)
    looked_up, formatted = ContourText(affine, shape), ContourText(affine, shape, lookup=False)
    assert looked_up.by_lookup and not formatted.by_lookup
    columns, rows, slices = random_points(shape, 3000)
    lengths = [1, 4, 995, 2000]
    texts = looked_up.contours(columns, rows, slices, lengths)
    assert texts == formatted.contours(columns, rows, slices, lengths)
    assert [len(t.split(b"\\")) for t in texts] == [3 * n for n in lengths]
    assert b"-0.000" not in b"".join(texts)


@pytest.mark.parametrize("series", ["axial", "coronal-oblique"])
def test_contour_text_is_the_affine_image_of_the_points(series: str) -> None:
    """On oblique stacks (no lookup) and on any other: the values are the affine image of the points' pixel
    coordinates (a sub-pixel's centre: (index - 1) / 3), to 0.001 mm."""
    volume = volumes_of(SERIES[series])[0]
    text = ContourText(volume.affine, volume.shape)
    assert not text.by_lookup
    columns, rows, slices = random_points(volume.shape, 500)
    (values,) = text.contours(columns, rows, slices, [500])
    found = np.array([float(v) for v in values.split(b"\\")]).reshape(-1, 3)
    ijk = np.stack([(columns - 1) / 3, (rows - 1) / 3, slices, np.ones(500)])
    assert np.allclose(found, (volume.affine @ ijk)[:3].T, atol=6e-4, rtol=0)
