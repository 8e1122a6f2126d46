"""The encoding stage's objects beside the SEG (``dicom_node.outputs.encode_derived``): exactly the kinds
asked for, written to the job's outbox under names that a re-run keeps (derived UIDs: a re-run replaces),
nothing for an empty label map, and an object dciodvfy finds invalid is refused naming its kind
(``output_invalid``; the encoding stage records that kind alone as not made, see test_pipeline)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.jobs.context import PipelineError
from dicom_node.jobs.records import LabelMapRecord
from dicom_node.outputs import volumetry
from dicom_node.outputs.derived import DerivedContext, OutputKind
from dicom_node.outputs.encode_derived import StackResult, encode_derived, validate_derived
from dicom_node.outputs.label_layout import LabelLayout, label_layout
from dicom_node.outputs.seg import AlgorithmInfo, SegOptions, encode_seg, segments_from_catalog
from tests.dicom_node.seg_support import synthetic_label_map, volumes_of
from tests.support.paths import T2_SAG, series_files
from tests.support.pipeline import PipelineNode
from tests.support.ports import free_port

ALGORITHM = AlgorithmInfo("TotalSegmentator", "total_mr", "2.0")
RECORD = LabelMapRecord("labels.npy", 0, "", "total_mr", "normal", False, None, {}, [], "cpu", {})


def stack_of(labels: np.ndarray, layout: LabelLayout | None = None) -> StackResult:
    volume = volumes_of(T2_SAG)[0]
    segments = segments_from_catalog("total_mr")
    options = SegOptions()
    seg = encode_seg(volume, labels, segments, ALGORITHM, options) if labels.any() else None
    names = volumetry.catalog_names("total_mr")
    measured = volumetry.measure(volume, labels, "total_mr", names, layout)
    return StackResult(volume, labels, RECORD, segments, ALGORITHM, measured, seg, options, layout)


def test_each_kind_asked_for_is_written_once_and_a_rerun_writes_the_same_files(
    tmp_path: Path, make_node: Callable[..., PipelineNode]
) -> None:
    ctx = make_node(tmp_path, free_port()).ctx
    volume = volumes_of(T2_SAG)[0]
    stack = stack_of(synthetic_label_map(volume.shape, [1, 2, 5]))
    kinds = {OutputKind.SR: ["pacs"], OutputKind.RTSTRUCT: ["pacs"]}
    first = encode_derived(ctx, 7, stack, kinds)
    assert [o.kind for o in first] == ["sr", "rtstruct"]
    assert all(o.destinations == ["pacs"] and len(o.files) == 1 for o in first)
    written = sorted(p.name for p in ctx.outbox_dir(7).iterdir())
    assert written == sorted(o.files[0] for o in first)
    sr = pydicom.dcmread(ctx.outbox_dir(7) / first[0].files[0])
    assert sr.SOPInstanceUID == first[0].files[0].removesuffix(".dcm")
    assert first[0].seg_sop_instance_uid == stack.seg.sop_instance_uid  # type: ignore[union-attr]

    again = encode_derived(ctx, 7, stack, {OutputKind.OVERLAY: ["pacs"], **kinds})
    assert [o.files for o in again[1:]] == [o.files for o in first]
    assert len(again[0].files) == len(series_files(T2_SAG))
    assert sorted(p.name for p in ctx.outbox_dir(7).iterdir()) == sorted(f for o in again for f in o.files)


def test_the_overlay_and_rtstruct_made_from_the_stacks_layout_are_those_made_without(
    tmp_path: Path, make_node: Callable[..., PipelineNode]
) -> None:
    ctx = make_node(tmp_path, free_port()).ctx
    labels = synthetic_label_map(volumes_of(T2_SAG)[0].shape, [1, 2, 5])
    kinds = {OutputKind.OVERLAY: ["pacs"], OutputKind.RTSTRUCT: ["pacs"]}

    def written(job: int, stack: StackResult) -> list[bytes]:
        overlay, rtstruct = encode_derived(ctx, job, stack, kinds)
        images = [pydicom.dcmread(ctx.outbox_dir(job) / f).PixelData for f in overlay.files]
        structure_set = pydicom.dcmread(ctx.outbox_dir(job) / rtstruct.files[0])
        contours = [bytes(str(item.ContourSequence), "utf-8") for item in structure_set.ROIContourSequence]
        return images + contours

    assert written(10, stack_of(labels, label_layout(labels))) == written(11, stack_of(labels))


def test_an_empty_label_map_gives_no_object(tmp_path: Path, make_node: Callable[..., PipelineNode]) -> None:
    ctx = make_node(tmp_path, free_port()).ctx
    volume = volumes_of(T2_SAG)[0]
    stack = stack_of(np.zeros(volume.shape, dtype=np.uint8))
    assert encode_derived(ctx, 8, stack, dict.fromkeys(list(OutputKind)[1:], ["pacs"])) == []
    assert not ctx.outbox_dir(8).exists()


def test_an_object_dciodvfy_finds_invalid_is_refused_naming_its_kind(
    tmp_path: Path, make_node: Callable[..., PipelineNode]
) -> None:
    ctx = make_node(tmp_path, free_port()).ctx
    volume = volumes_of(T2_SAG)[0]
    [output] = encode_derived(
        ctx, 9, stack_of(synthetic_label_map(volume.shape, [1])), {OutputKind.RTSTRUCT: ["pacs"]}
    )
    path = ctx.outbox_dir(9) / output.files[0]
    broken = pydicom.dcmread(path)
    del broken.StructureSetROISequence  # Type 1 in the Structure Set module
    broken.save_as(path, enforce_file_format=True)
    with pytest.raises(PipelineError) as caught:
        validate_derived(ctx, OutputKind.RTSTRUCT, [path], "series 1.2.3")
    assert caught.value.reason == "output_invalid"
    assert caught.value.message.startswith(
        "series 1.2.3: the rtstruct object is not valid: dciodvfy reported"
    )


def test_an_overlay_series_that_cannot_be_written_to_the_end_leaves_none_of_its_images(
    tmp_path: Path, make_node: Callable[..., PipelineNode]
) -> None:
    """The overlay's images are written as they are drawn: where one cannot be written (a folder stands
    where its file goes), the images written before it are removed too, and the error names the file."""
    ctx = make_node(tmp_path, free_port()).ctx
    volume = volumes_of(T2_SAG)[0]
    stack = stack_of(synthetic_label_map(volume.shape, [1, 2, 5]))
    third = DerivedContext(stack.volume, stack.algorithm, stack.options).uid(OutputKind.OVERLAY, "instance-2")
    blocker = ctx.outbox_dir(12) / f"{third}.dcm"
    (blocker / "in-the-way").mkdir(parents=True)
    with pytest.raises(OSError, match=str(blocker)):
        encode_derived(ctx, 12, stack, {OutputKind.OVERLAY: ["pacs"]})
    assert sorted(p.name for p in ctx.outbox_dir(12).iterdir()) == [blocker.name]
    (blocker / "in-the-way").rmdir()
    blocker.rmdir()
    [overlay] = encode_derived(ctx, 12, stack, {OutputKind.OVERLAY: ["pacs"]})
    assert blocker.name in overlay.files and len(overlay.files) == volume.shape[2]
    assert sorted(p.name for p in ctx.outbox_dir(12).iterdir()) == sorted(overlay.files)
