"""Where things lie: the repository, the test data shipped with it, and the full sets beside the checkout."""

from __future__ import annotations

from pathlib import Path

#: The repository root (the worktree the tests run from).
ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
TEST_DATA = TESTS / "data"
#: Small subset of real MRI shipped with the repository (see tests/data/mri/README.md).
TEST_MRI = TEST_DATA / "mri"
#: The tiny nnU-Net models in TotalSegmentator's layout (see tests/data/models).
MODELS = TEST_DATA / "models"
#: ``../shared`` beside the checkout: the full real-scanner set and model facts; absent in a fresh clone.
SHARED = ROOT.parent / "shared"
SHARED_MRI = SHARED / "data" / "mri"
SHARED_REFERENCE = SHARED / "reference"

PROSTATEX = TEST_MRI / "prostatex"
#: 19 sagittal T2 slices, Siemens Skyra, Explicit VR Little Endian.
T2_SAG = PROSTATEX / "ProstateX-0000_3.000000-t2tsesag-87368"
#: Coronal T2 slices of the same study.
T2_COR = PROSTATEX / "ProstateX-0000_5.000000-t2tsecor-03471"
#: 16 transverse-oblique slices of a 3D PD series (same study), 128x128.
PD_TRA = PROSTATEX / "ProstateX-0000_9.000000-tfl3d_PD_reftra1.5x1.5t3-67276"
#: 12 short-axis slices, GE Signa, UIDs with leading-zero components, Images in Acquisition 280.
CINE = TEST_MRI / "sunnybrook_cardiac" / "SCD0000101_CINESAX_phase1"
#: The same image in 9 transfer syntaxes.
TS9 = TEST_MRI / "dcm_qa_ts" / "ax_asc_35sl_9_transfer_syntaxes"


def series_files(folder: Path) -> list[Path]:
    """The ``.dcm`` files of a series folder, sorted by name; fails when there is none."""
    files = sorted(p for p in folder.iterdir() if p.suffix == ".dcm")
    assert files, f"no DICOM files in {folder}"
    return files
