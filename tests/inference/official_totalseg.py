"""Run the official TotalSegmentator command (the parity and benchmark anchor) offline and privately.

The command runs in a child process exactly as the ``TotalSegmentator`` console script does
(``totalsegmentator.bin.TotalSegmentator:main`` with the given arguments), with

* ``TOTALSEG_WEIGHTS_PATH`` pointing at a copy of the weights (e.g. the tiny test models);
* ``TOTALSEG_HOME_DIR`` at a private folder whose ``config.json`` has ``send_usage_stats: false`` (so nothing
  is posted anywhere) and the statistics disclaimer already shown;
* one adjustment before ``main()``: nnU-Net's trainer lookup resolves the trainer classes of the MRI models
  from their modules (``inference.nnunet_models.trainer_class``) instead of importing every trainer module
  first; the classes are the same. The full scan imports torchvision, which breaks where a CUDA build of
  torchvision sits next to a CPU build of torch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import ROOT
from tests.support.rss import TreeRssSampler

_RUNNER = """
import sys
import nnunetv2.utilities.find_objects as find_objects
from inference.nnunet_models import KNOWN_TRAINERS, trainer_class
_original = find_objects.recursive_find_trainer_class_by_name
def _lookup(name):
    return trainer_class(name) if name in KNOWN_TRAINERS else _original(name)
find_objects.recursive_find_trainer_class_by_name = _lookup
from totalsegmentator.bin.TotalSegmentator import main
sys.argv = ["TotalSegmentator", *sys.argv[1:]]
sys.exit(main())
"""


@dataclass
class OfficialRun:
    seconds: float
    #: Stage times the command prints (``resample``, ``predict``, ``resample_back``), in seconds.
    stages: dict[str, float]
    stdout: str
    #: Peak resident memory of the command's process tree (sampled every 0.2 s), bytes.
    peak_rss: int = 0


def private_home(folder: Path) -> Path:
    """A TotalSegmentator home folder that never sends usage statistics."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "totalseg_id": "totalseg_SEGNODETEST",
        "send_usage_stats": False,
        "prediction_counter": 0,
        "statistics_disclaimer_shown": True,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=4))
    return folder


def copy_weights(source: Path, dest: Path) -> Path:
    """Copy the weights so that the official command cannot touch the repository's files."""
    if not dest.exists():
        shutil.copytree(source, dest)
    return dest


def run_totalsegmentator(
    dicom_dir: Path,
    out_file: Path,
    weights_dir: Path,
    home_dir: Path,
    *,
    fast: bool = False,
    task: str = "total_mr",
    device: str = "cpu",
    roi_subset: list[str] | None = None,
    timeout: float = 900,
) -> OfficialRun:
    """``TotalSegmentator -i DICOM_DIR -o OUT.nii.gz --ml -ta TASK -d DEVICE [--fast] [--roi_subset ...]``
    (device cpu | gpu)."""
    env = dict(os.environ)
    env["TOTALSEG_WEIGHTS_PATH"] = str(weights_dir)
    env["TOTALSEG_HOME_DIR"] = str(private_home(home_dir))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    args = ["-i", str(dicom_dir), "-o", str(out_file), "--ml", "-ta", task, "-d", device]
    if fast:
        args.append("--fast")
    if roi_subset:
        args += ["--roi_subset", *roi_subset]
    start = time.perf_counter()
    with (
        subprocess.Popen(
            [sys.executable, "-c", _RUNNER, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as child,
        TreeRssSampler(child.pid) as sampler,
    ):
        try:
            stdout, stderr = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise
    proc = subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or not out_file.is_file():
        raise RuntimeError(
            f"TotalSegmentator failed (exit {proc.returncode}) on {dicom_dir}:\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-3000:]}"
        )
    patterns = (("resample", r"Resampled in ([0-9.]+)s"), ("predict", r"Predicted in ([0-9.]+)s"))
    stages = {name: float(m.group(1)) for name, pattern in patterns if (m := re.search(pattern, proc.stdout))}
    back = re.findall(r"Resampled in ([0-9.]+)s", proc.stdout)
    if len(back) > 1:
        stages["resample_back"] = float(back[-1])
    return OfficialRun(elapsed, stages, proc.stdout, sampler.peak)
