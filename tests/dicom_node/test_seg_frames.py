"""The fast BINARY frame assembly (dicom_node.outputs.seg_frames) gives the SEG highdicom's own constructor
gives."""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode

from conversion.volume import Volume
from dicom_node.durable import write_dicom
from dicom_node.outputs import seg_frames
from dicom_node.outputs.seg import (
    Compression,
    EncodedSeg,
    SegmentationType,
    SegOptions,
    encode_seg,
)
from tests.dicom_node.seg_support import TEST_SEGMENTS, synthetic_label_map, volumes_of
from tests.dicom_node.test_seg import ALGORITHM, LABELS, SERIES

#: Values that change with the time of encoding.
_VARYING = (
    "ContributionDateTime",
    "ContentDate",
    "ContentTime",
    "InstanceCreationDate",
    "InstanceCreationTime",
)


def _normalised(path: Path) -> bytes:
    """The file re-encoded by pydicom with the per-object random values blanked."""
    ds = pydicom.dcmread(path)

    def blank(dataset: Dataset) -> None:
        for elem in dataset:
            if elem.keyword in _VARYING:
                elem.value = ""
            elif elem.VR == "SQ":
                for item in elem.value:
                    blank(item)

    blank(ds)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _both(
    tmp_path: Path, volume: Volume, label_map: np.ndarray, options: SegOptions | None = None
) -> tuple[EncodedSeg, Path, Path]:
    fast = encode_seg(volume, label_map, TEST_SEGMENTS, ALGORITHM, options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = encode_seg(volume, label_map, TEST_SEGMENTS, ALGORITHM, options, highdicom_frames=True)
    assert fast.sop_instance_uid == reference.sop_instance_uid
    assert fast.number_of_frames == reference.number_of_frames
    return (
        fast,
        write_dicom(fast.dataset, tmp_path / "fast.dcm"),
        write_dicom(reference.dataset, tmp_path / "highdicom.dcm"),
    )


@pytest.mark.parametrize("series", list(SERIES))
def test_fast_frames_equal_highdicom_constructor(tmp_path: Path, test_mri: Path, series: str) -> None:
    volumes = volumes_of(test_mri / SERIES[series])
    for index, volume in enumerate(volumes[:2]):
        label_map = synthetic_label_map(volume.shape, LABELS, seed=index)
        fast, fast_path, reference_path = _both(tmp_path, volume, label_map)
        assert fast.number_of_frames > volume.shape[2]  # several segments per plane, empty frames omitted
        assert _normalised(fast_path) == _normalised(reference_path)


def test_jpeg2000_frames_equal_highdicom_constructor(tmp_path: Path, test_mri: Path) -> None:
    volume = volumes_of(test_mri / SERIES["coronal_oblique"])[0]
    label_map = synthetic_label_map(volume.shape, LABELS)
    options = SegOptions(compression=Compression.JPEG2000)
    fast, fast_path, reference_path = _both(tmp_path, volume, label_map, options)
    assert pydicom.dcmread(fast_path).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    assert _normalised(fast_path) == _normalised(reference_path)


def test_single_segment_equals_highdicom_constructor(tmp_path: Path, test_mri: Path) -> None:
    """One segment: highdicom identifies it in the shared functional groups and calls the frames 3D."""
    volume = volumes_of(test_mri / SERIES["sagittal"])[0]
    label_map = synthetic_label_map(volume.shape, [17])
    fast, fast_path, reference_path = _both(tmp_path, volume, label_map)
    ds = pydicom.dcmread(fast_path)
    assert ds.DimensionOrganizationType == "3D"
    assert ds.SharedFunctionalGroupsSequence[0].SegmentIdentificationSequence[0].ReferencedSegmentNumber == 1
    assert _normalised(fast_path) == _normalised(reference_path)


def test_in_memory_dataset_encodes_in_every_transfer_syntax(tmp_path: Path, test_mri: Path) -> None:
    """The pre-encoded Per-frame Functional Groups are decoded when the dataset is read or re-encoded in
    implicit VR (C-STORE may negotiate it), and copied as they are in explicit VR."""
    volume = volumes_of(test_mri / SERIES["coronal_oblique"])[0]
    label_map = synthetic_label_map(volume.shape, LABELS)
    fast = encode_seg(volume, label_map, TEST_SEGMENTS, ALGORITHM)
    expected = pydicom.dcmread(write_dicom(fast.dataset, tmp_path / "fast.dcm"))
    items = expected.PerFrameFunctionalGroupsSequence
    assert len(items) == fast.number_of_frames
    for implicit in (True, False):
        encoded = encode(fast.dataset, implicit, True)
        assert encoded is not None
        back = decode(BytesIO(encoded), implicit, True)
        assert back.PerFrameFunctionalGroupsSequence == items
        assert back.PixelData == expected.PixelData
    assert fast.dataset.PerFrameFunctionalGroupsSequence == items


def test_frames_of_is_the_transposed_label_map() -> None:
    rng = np.random.default_rng(3)
    for shape in [(70, 130, 3), (1, 1, 1), (64, 64, 1), (200, 9, 17)]:
        label_map = rng.integers(0, 9, shape).astype(np.uint16)
        np.testing.assert_array_equal(seg_frames.frames_of(label_map), label_map.transpose(2, 1, 0))


def test_plane_label_census() -> None:
    frames = np.zeros((3, 4, 4), dtype=np.uint8)
    frames[0, 0, :2] = 5
    frames[0, 2, 3] = 5
    frames[2, 3, 3] = 1
    census = seg_frames.plane_label_census(frames)
    assert census.counts.shape == (3, 6)
    assert census.counts[0].tolist() == [13, 0, 0, 0, 0, 3]
    assert census.counts[1].tolist() == [16, 0, 0, 0, 0, 0]
    assert census.counts[2].tolist() == [15, 1, 0, 0, 0, 0]
    assert (census.first_row[0, 5], census.last_row[0, 5]) == (0, 2)
    assert (census.first_row[2, 1], census.last_row[2, 1]) == (3, 3)
    assert (census.first_row[1, 0], census.last_row[1, 0]) == (0, 3)


def test_skeleton_outside_the_fast_path_is_refused(test_mri: Path) -> None:
    """A skeleton the assembly does not handle (here a LABELMAP SEG) is refused with a clear error."""
    volume = volumes_of(test_mri / SERIES["sagittal"])[0]
    label_map = synthetic_label_map(volume.shape, LABELS)
    labelmap = encode_seg(
        volume, label_map, TEST_SEGMENTS, ALGORITHM, SegOptions(segmentation_type=SegmentationType.LABELMAP)
    )
    frames = seg_frames.frames_of(label_map)
    with pytest.raises(
        seg_frames.FrameAssemblyError, match="handles BINARY SEGs in explicit VR little endian"
    ):
        seg_frames.assemble_binary_frames(
            labelmap.dataset,
            frames,
            seg_frames.plane_label_census(frames),
            LABELS,
            np.zeros((volume.shape[2], 3)),
            [],
        )
