"""Weights folder: location, status per task, model folders, import from a zip or a folder."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest

from config.inference import InferenceConfig
from inference import registry, weights, weights_install
from inference.weights import (
    InvalidWeightsError,
    MissingWeightsError,
    find_model_folder,
    model_problems,
    resolve_weights_dir,
    task_status,
    weights_status,
)
from inference.weights_install import import_weights, install_zip
from tests.support.models import make_model_folder, write_zip
from tests.support.paths import MODELS

M850 = registry.get_part_model(850)
M851 = registry.get_part_model(851)


def test_weights_dir_from_config_then_environment_then_home(tmp_path: Path) -> None:
    env = {"TOTALSEG_WEIGHTS_PATH": str(tmp_path / "env")}
    assert resolve_weights_dir(InferenceConfig(weights_dir=tmp_path / "cfg"), env) == tmp_path / "cfg"
    assert resolve_weights_dir(InferenceConfig(), env) == tmp_path / "env"
    assert resolve_weights_dir(None, env) == tmp_path / "env"
    assert resolve_weights_dir(None, {}) == Path.home() / ".totalsegmentator" / "nnunet" / "results"


def test_find_model_folder_returns_the_nnunet_results_folder(tmp_path: Path) -> None:
    model_dir = make_model_folder(tmp_path, M850)
    assert find_model_folder(M850, tmp_path) == model_dir
    assert model_dir == tmp_path / M850.dataset_folder_name / M850.model_folder_name
    assert (model_dir / "fold_0" / "checkpoint_final.pth").is_file()


def test_missing_weights_name_the_task_the_folder_and_the_command(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError) as info:
        find_model_folder(M851, tmp_path)
    message = info.value.message
    assert info.value.reason == "missing_weights"
    assert "task total_mr" in message
    assert str(tmp_path / M851.dataset_folder_name) in message
    assert "segnode models download total_mr" in message and "segnode models import" in message
    licensed = registry.get_part_model(857)
    with pytest.raises(MissingWeightsError, match="thigh_shoulder_muscles_mr --license-key KEY"):
        find_model_folder(licensed, tmp_path)


def test_incomplete_folders_are_not_installed(tmp_path: Path) -> None:
    model_dir = make_model_folder(tmp_path, M850)
    (model_dir / "fold_0" / "checkpoint_final.pth").unlink()
    assert model_problems(M850, tmp_path) == [f"{model_dir / 'fold_0' / 'checkpoint_final.pth'} is missing"]
    with pytest.raises(MissingWeightsError, match="checkpoint_final.pth is missing"):
        find_model_folder(M850, tmp_path, task="total_mr")
    (model_dir / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    assert any("is empty" in p for p in model_problems(M850, tmp_path))
    (model_dir / "fold_0" / "checkpoint_final.pth").write_bytes(b"x")
    (model_dir / "dataset.json").write_text('{"labels": {"background": 0, "spleen": 1}}')
    assert model_problems(M850, tmp_path) == [
        f"{model_dir / 'dataset.json'} has 2 labels, expected 30 (background + the 29 of dataset 850)"
    ]
    (model_dir / "dataset.json").write_text("{not json")
    assert "is not readable JSON" in model_problems(M850, tmp_path)[0]


def test_status_per_task_installed_partial_missing_with_sizes(tmp_path: Path) -> None:
    make_model_folder(tmp_path, M850, checkpoint=b"x" * 1000)
    make_model_folder(tmp_path, registry.get_part_model(852), checkpoint=b"y" * 500)
    status = {s.task: s for s in weights_status(tmp_path)}
    total = status["total_mr"]
    assert total.state == "partial" and not total.licensed
    assert dict(total.modes) == {"default": False, "fast": True, "fastest": False}
    installed = {m.dataset_id: m.installed for m in total.models}
    assert installed == {850: True, 851: False, 852: True, 853: False}
    sizes = {m.dataset_id: m.size_bytes for m in total.models}
    assert sizes[851] == 0 and sizes[850] > 1000 and sizes[852] > 500
    assert total.size_bytes == sum(sizes.values())
    assert status["vertebrae_mr"].state == "missing"
    assert status["face_mr"].licensed and status["face_mr"].state == "missing"
    make_model_folder(tmp_path, M851)
    make_model_folder(tmp_path, registry.get_part_model(853))
    full = task_status(registry.get_task("total_mr"), tmp_path)
    assert full.state == "installed" and all(full.modes.values())
    document = full.to_json()
    assert document["state"] == "installed" and len(document["models"]) == 4
    json.dumps(document)  # serialisable as is


def test_an_existing_totalsegmentator_tree_works_as_is(tmp_path: Path) -> None:
    # a ~/.totalsegmentator/nnunet/results tree holds other tasks' folders and TotalSegmentator's own files
    home_tree = tmp_path / ".totalsegmentator" / "nnunet" / "results"
    make_model_folder(home_tree, M850)
    make_model_folder(home_tree, M851)
    (home_tree / "Dataset291_TotalSegmentator_part1_organs_1559subj").mkdir()
    (tmp_path / ".totalsegmentator" / "config.json").write_text('{"send_usage_stats": false}')
    weights_dir = resolve_weights_dir(None, {"TOTALSEG_WEIGHTS_PATH": str(home_tree)})
    assert dict(task_status(registry.get_task("total_mr"), weights_dir).modes)["default"] is True


def test_the_tiny_test_models_have_the_real_layout() -> None:
    found = sorted(p.name for p in MODELS.iterdir() if p.is_dir())
    assert found, f"no tiny models in {MODELS}"
    known = {m.dataset_folder_name: m for m in registry.part_models().values()}
    for name in found:
        assert name in known, name
        assert model_problems(known[name], MODELS) == []


def test_import_from_a_folder_of_dataset_folders(tmp_path: Path) -> None:
    source = tmp_path / "usb"
    make_model_folder(source, M850)
    make_model_folder(source, M851)
    (source / "README.txt").write_text("copied from the research cluster")
    dest = tmp_path / "weights"
    imported = import_weights(source, dest)
    assert sorted(m.dataset_id for m in imported) == [850, 851]
    assert task_status(registry.get_task("total_mr"), dest).modes["default"]
    assert not any(p.name.startswith(".segnode-") for p in dest.iterdir())  # no temporary folder left


def test_import_a_single_dataset_folder_replaces_a_broken_one(tmp_path: Path) -> None:
    dest = tmp_path / "weights"
    broken = make_model_folder(dest, M850)
    (broken / "plans.json").unlink()
    source = make_model_folder(tmp_path / "src", M850, checkpoint=b"good").parent
    assert [m.dataset_id for m in import_weights(source, dest)] == [850]
    assert model_problems(M850, dest) == []
    assert M850.checkpoint_path(dest).read_bytes() == b"good"


def test_import_of_a_folder_missing_its_checkpoint_fails_and_changes_nothing(tmp_path: Path) -> None:
    source = make_model_folder(tmp_path / "src", M851).parent
    M851.checkpoint_path(tmp_path / "src").unlink()
    dest = tmp_path / "weights"
    with pytest.raises(InvalidWeightsError) as info:
        import_weights(source, dest)
    assert info.value.reason == "invalid_weights"
    assert "checkpoint_final.pth is missing" in info.value.message
    assert not (dest / M851.dataset_folder_name).exists()


def test_import_of_a_folder_without_weights_lists_what_is_expected(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        InvalidWeightsError, match="holds no weights folder SegNode knows; expected one of: Dataset"
    ):
        import_weights(tmp_path / "empty", tmp_path / "weights")
    with pytest.raises(InvalidWeightsError, match="does not exist"):
        import_weights(tmp_path / "nowhere", tmp_path / "weights")


def test_import_from_a_zip(tmp_path: Path) -> None:
    source = make_model_folder(tmp_path / "src", M850).parent
    archive = write_zip(source, tmp_path / "w.zip")
    dest = tmp_path / "weights"
    assert [m.dataset_id for m in import_weights(archive, dest)] == [850]
    assert find_model_folder(M850, dest) == M850.model_dir(dest)


def test_zip_with_the_wrong_layout_is_refused(tmp_path: Path) -> None:
    # the dataset folder one level too deep, as a careless re-zip produces
    source = make_model_folder(tmp_path / "src", M850).parent
    archive = write_zip(source, tmp_path / "w.zip", arc_root=f"results/{M850.dataset_folder_name}")
    dest = tmp_path / "weights"
    with pytest.raises(InvalidWeightsError, match="wrong layout, expected the folder"):
        install_zip(archive, dest, expected=[M850])
    # right folder name, wrong trainer folder inside
    (source / M850.model_folder_name).rename(source / "nnUNetTrainer__nnUNetPlans__3d_fullres")
    archive = write_zip(source, tmp_path / "w2.zip")
    with pytest.raises(InvalidWeightsError, match="wrong layout: .*does not exist"):
        install_zip(archive, dest, expected=[M850])
    assert sorted(p.name for p in dest.iterdir()) == []  # nothing installed, no temporary folder left


def test_unsafe_zip_members_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"{M850.dataset_folder_name}/../../outside.txt", "x")
    with pytest.raises(InvalidWeightsError, match="unsafe path"):
        install_zip(archive, tmp_path / "weights")
    assert not (tmp_path / "outside.txt").exists()


def test_corrupt_zip_is_refused(tmp_path: Path) -> None:
    source = make_model_folder(tmp_path / "src", M850, checkpoint=os.urandom(4096)).parent
    archive = write_zip(source, tmp_path / "w.zip")
    data = bytearray(archive.read_bytes())
    assert data[:4] == b"PK\x03\x04"
    # flip bytes inside the compressed data of the first members, leaving the directory intact
    for offset in range(200, 260):
        data[offset] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(InvalidWeightsError) as info:
        install_zip(archive, tmp_path / "weights")
    assert info.value.reason == "corrupt_archive"
    (tmp_path / "text.zip").write_text("not a zip at all")
    with pytest.raises(InvalidWeightsError, match="is not a zip file"):
        import_weights(tmp_path / "text.zip", tmp_path / "weights")


def test_package_data_urls_are_totalsegmentators_release_locations() -> None:
    sources = weights.weight_sources()
    locations = weights.DownloadLocations.from_config()
    assert locations.release_base_url == "https://github.com/wasserth/TotalSegmentator/releases/download"
    for dataset_id in (850, 851, 852, 853, 597, 598, 756):
        model = registry.get_part_model(dataset_id)
        source = sources[dataset_id]
        assert source.folder == model.dataset_folder_name
        assert source.url == f"{locations.release_base_url}/{model.release}/{model.dataset_folder_name}.zip"
        assert locations.url_for(source) == source.url
    for dataset_id, task in ((925, "tissue_types_mr"), (855, "appendicular_bones_mr"), (856, "face_mr")):
        assert sources[dataset_id].license_task == task and sources[dataset_id].url is None
    assert sources[857].license_task == "thigh_shoulder_muscles_mr"
    assert locations.url_for(sources[857]) == "https://backend.totalsegmentator.com:443/download_weights"
    mirror = weights.DownloadLocations.from_config(
        InferenceConfig(weights_base_url="https://pacs-mirror.local/w/")
    )
    assert mirror.url_for(sources[850]) == (
        "https://pacs-mirror.local/w/v2.5.0-weights/Dataset850_TotalSegMRI_part1_organs_1088subj.zip"
    )


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_redraws_on_a_terminal_and_prints_steps_in_a_log() -> None:
    terminal = _Terminal()
    bar = weights_install.Progress(terminal, "Dataset850", 2_000_000)
    bar.update(1_000_000)
    bar.finish()
    assert terminal.getvalue() == (
        "\rDataset850: [############             ]  50% 1.0/2.0 MB"
        "\rDataset850: [############             ]  50% 1.0/2.0 MB\n"
    )
    log = io.StringIO()
    bar = weights_install.Progress(log, "Dataset850", 1000)
    for _ in range(4):
        bar.update(250)
    bar.finish()
    assert [line.split("]")[1].split("%")[0].strip() for line in log.getvalue().splitlines()] == [
        "25",
        "50",
        "75",
        "100",
    ]
    unknown = io.StringIO()
    bar = weights_install.Progress(unknown, "face", None)
    bar.update(3_500_000)
    bar.finish()
    assert unknown.getvalue() == "face: 3.5 MB\n"
