"""``segnode segment``: a series in, label maps as NIfTI in the source geometry out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest

from conversion import load_series
from dicom_node.cli import main
from dicom_node.outputs.validation import validate_with_dciodvfy
from inference import host_memory
from tests.support.paths import MODELS, PROSTATEX, ROOT
from tests.support.settings import inference_settings, write_settings

AXIAL_3D = PROSTATEX / "ProstateX-0000_9.000000-tfl3d_PD_reftra1.5x1.5t3-67276"
DWI = PROSTATEX / "ProstateX-0000_6.000000-ep2ddifftraDYNDIST-69284"


def test_segment_writes_nifti_in_source_geometry_and_the_seg_beside_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = {
        "inference": {"weights_dir": str(MODELS), "device": "cpu"},
        "seg": {"series_description": "{task} from the command line"},
    }
    config = write_settings(tmp_path / "segnode.yaml", settings)
    out = tmp_path / "out"
    assert main(["segment", str(AXIAL_3D), "--out", str(out), "--config", str(config)]) == 0
    volume = load_series(sorted(AXIAL_3D.glob("*.dcm")))[0]
    image = nib.load(out / "total_mr.nii.gz")
    assert image.shape == volume.shape
    np.testing.assert_allclose(image.affine, volume.affine_ras, atol=1e-4)
    labels = np.asanyarray(image.dataobj)
    assert labels.dtype == np.uint8 and labels.max() > 0
    sidecar = json.loads((out / "total_mr.json").read_text())
    assert sidecar["task"] == "total_mr" and sidecar["mode"] == "default"
    assert [m["dataset_id"] for m in sidecar["models"]] == [850, 851]
    assert sidecar["series_instance_uid"] == volume.series_instance_uid
    assert len(sidecar["class_map"]) == 50 and sidecar["labels_present"]
    assert {"load_series", "predict_850", "predict_851", "total"} <= set(sidecar["timings_s"])
    # inference.cpu_memory (default hugepages) was applied by the command before the engine ran
    assert os.environ[host_memory.THP_VARIABLE] == "1" and "release_memory" in sidecar["timings_s"]
    printed = capsys.readouterr().out
    assert "total_mr.nii.gz" in printed

    # a valid DICOM-SEG beside the NIfTI, with the same labels on its grid
    seg_path = out / "total_mr.seg.dcm"
    assert f"{seg_path}: DICOM-SEG BINARY" in printed
    validate_with_dciodvfy(seg_path)
    seg = hd.seg.segread(seg_path)
    assert seg.SeriesDescription == "total_mr from the command line"
    frames = seg.get_pixels_by_source_instance(
        [r.sop_instance_uid for r in volume.slice_refs], combine_segments=True, relabel=False
    )
    present = [int(v) for v in np.unique(labels) if v != 0]
    lut = np.zeros(max(present) + 1, dtype=np.uint8)
    lut[1 : len(present) + 1] = present
    np.testing.assert_array_equal(lut[frames].transpose(2, 1, 0), labels)


def test_segment_writes_one_label_map_per_stack(tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = inference_settings(tmp_path / "segnode.yaml", MODELS, device="cpu")
    assert main(["segment", str(DWI), "--out", str(out), "--config", str(config), "--fast"]) == 0
    volumes = load_series(sorted(DWI.glob("*.dcm")))
    written = sorted(p.name for p in out.glob("*.nii.gz"))
    assert len(written) == len(volumes) == 3
    assert all(name.startswith("total_mr_") for name in written)
    assert any("b=800" in name for name in written)
    for path in out.glob("*.json"):
        assert json.loads(path.read_text())["models"][0]["dataset_id"] == 852


def test_missing_weights_give_a_message_not_a_traceback(tmp_path: Path) -> None:
    config = inference_settings(tmp_path / "segnode.yaml", tmp_path / "no-weights", device="cpu")
    code = (
        "from dicom_node.cli import main; raise SystemExit(main(['segment', "
        f"{str(AXIAL_3D)!r}, '--out', {str(tmp_path / 'out')!r}, '--config', {str(config)!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "error [missing_weights]" in proc.stderr
    assert "Dataset850_TotalSegMRI_part1_organs_1088subj" in proc.stderr
    assert "segnode models download total_mr" in proc.stderr
    assert not list((tmp_path / "out").glob("*.nii.gz"))


def test_not_a_series_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["segment", str(tmp_path / "absent"), "--out", str(tmp_path / "out")]) == 1
    assert "error [invalid_input]" in capsys.readouterr().err
