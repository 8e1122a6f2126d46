"""The task registry holds TotalSegmentator 2.18's MRI model facts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference import registry
from inference.registry import UnknownTaskError, UnsupportedModeError, get_part_model, get_task
from tests.support.paths import SHARED_REFERENCE


def test_total_mr_default_runs_850_then_851_at_1_5_mm() -> None:
    task = get_task("total_mr")
    models = task.models(task.mode())
    assert [m.dataset_id for m in models] == [850, 851]
    assert [m.num_labels for m in models] == [29, 21]
    assert all(m.spacing_mm == 1.5 for m in models)
    assert models[0].dataset_folder_name == "Dataset850_TotalSegMRI_part1_organs_1088subj"
    assert models[1].dataset_folder_name == "Dataset851_TotalSegMRI_part2_muscles_1088subj"
    assert models[0].model_folder_name == "nnUNetTrainer_2000epochs_NoMirroring__nnUNetPlans__3d_fullres"
    assert len(task.class_map) == 50 and not task.licensed
    # every part label maps into the merged 50-class map, no structure lost, none twice
    names = [n for m in models for n in m.class_map.values()]
    assert sorted(names) == sorted(task.class_map.values())


def test_total_mr_fast_and_fastest() -> None:
    task = get_task("total_mr")
    fast = task.models(task.mode(fast=True))
    fastest = task.models(task.mode(fastest=True))
    assert [(m.dataset_id, m.spacing_mm, m.num_labels) for m in fast] == [(852, 3.0, 50)]
    assert [(m.dataset_id, m.spacing_mm, m.num_labels) for m in fastest] == [(853, 6.0, 50)]
    assert fast[0].dataset_folder_name == "Dataset852_TotalSegMRI_total_3mm_1088subj"
    assert dict(fast[0].class_map) == dict(task.class_map)


def test_mode_fallbacks_follow_totalsegmentator() -> None:
    # body_mr has no fastest sub-mode: TotalSegmentator falls back to fast (598)
    body = get_task("body_mr")
    assert [m.dataset_id for m in body.models(body.mode(fastest=True))] == [598]
    # vertebrae_mr has no sub-modes and does not forbid --fast: the default model runs
    vert = get_task("vertebrae_mr")
    assert [m.dataset_id for m in vert.models(vert.mode(fast=True))] == [756]
    assert vert.part_models[0].trainer == "nnUNetTrainer_DASegOrd0_NoMirroring"
    # licensed tasks refuse --fast
    with pytest.raises(UnsupportedModeError) as err:
        get_task("face_mr").mode(fast=True)
    assert err.value.reason == "unsupported_mode" and "face_mr" in err.value.message


def test_licensed_tasks_make_the_80_structures() -> None:
    licensed = ["thigh_shoulder_muscles_mr", "appendicular_bones_mr", "tissue_types_mr", "face_mr"]
    counts = {name: len(get_task(name).class_map) for name in licensed}
    assert counts == {
        "thigh_shoulder_muscles_mr": 18,
        "appendicular_bones_mr": 8,
        "tissue_types_mr": 3,
        "face_mr": 1,
    }
    assert all(get_task(n).licensed and get_task(n).part_models[0].licensed for n in licensed)
    assert len(get_task("total_mr").class_map) + sum(counts.values()) == 80
    assert [get_task(n).part_models[0].dataset_id for n in licensed] == [857, 855, 925, 856]
    # the face model also predicts two auxiliary labels that the task removes
    assert dict(get_part_model(856).class_map) == {1: "face", 2: "brain", 3: "liver"}
    assert get_part_model(925).release is None and get_part_model(850).release == "v2.5.0-weights"


def test_unknown_names_fail_with_reason() -> None:
    with pytest.raises(UnknownTaskError) as err:
        get_task("total")
    assert err.value.reason == "unknown_task" and "total_mr" in err.value.message
    with pytest.raises(UnknownTaskError):
        get_part_model(291)


def test_weights_layout(tmp_path: Path) -> None:
    model = get_part_model(852)
    assert model.checkpoint_path(tmp_path) == (
        tmp_path
        / "Dataset852_TotalSegMRI_total_3mm_1088subj"
        / "nnUNetTrainer_2000epochs_NoMirroring__nnUNetPlans__3d_fullres"
        / "fold_0"
        / "checkpoint_final.pth"
    )


def test_package_data_matches_shared_reference() -> None:
    if not SHARED_REFERENCE.is_dir():
        pytest.skip(f"reference tables not present at {SHARED_REFERENCE}")
    ref = json.loads((SHARED_REFERENCE / "mr_class_maps_all.json").read_text())
    for name, task in registry.tasks().items():
        assert {str(k): v for k, v in task.class_map.items()} == ref[name]["classes"], name
    urls = json.loads((SHARED_REFERENCE / "weights_urls_mr.json").read_text())["weights"]
    for dataset_id, model in registry.part_models().items():
        assert model.dataset_folder_name == urls[str(dataset_id)]["folder"]
