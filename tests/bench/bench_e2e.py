"""End-to-end latency of SegNode with a real Orthanc: last instance received -> SEG stored in Orthanc, split
into its stages from the job's stage timings and audit events.

A series of ``--slices`` slices (default 100) is built from one real MR image (new UIDs, slice positions
``--step`` mm apart, pixels and all other attributes of the source), uploaded to Orthanc and sent by Orthanc
to a ``segnode serve`` process (tiny test models, CPU) with ``POST /modalities/{id}/store``; SegNode sends
the SEG back to Orthanc. The anchor, measured in the same run, is the C-STORE transfer of the series from
Orthanc to SegNode (first -> last instance received); the table gives each stage in seconds and as a ratio
to the anchor. Goal: everything but inference under 3 s for a 100-slice series.

Run: ``python tests/bench/bench_e2e.py [--slices 100] [--runs 1] [--source FILE]``
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.support

from dicom_node.audit.tables import Event, Instance, Series
from tests.support.orthanc import Orthanc
from tests.support.paths import T2_SAG
from tests.support.serve import SegNode, orthanc_and_segnode
from tests.support.waiting import wait_until

logger = logging.getLogger("bench_e2e")

DEFAULT_SOURCE = T2_SAG / "1-01.dcm"


def make_series(source: Path, slices: int, step_mm: float, folder: Path) -> tuple[list[Path], str, str]:
    """``slices`` copies of one real image as a new series, ``step_mm`` apart along the slice normal."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(source)
    study, series = generate_uid(), generate_uid()
    orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.asarray([float(v) for v in ds.ImagePositionPatient])
    files = []
    for number in range(1, slices + 1):
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [round(float(v), 4) for v in origin + (number - 1) * step_mm * normal]
        ds.SliceLocation = round(float((origin + (number - 1) * step_mm * normal) @ normal), 4)
        if "ImagesInAcquisition" in ds:
            del ds.ImagesInAcquisition
        path = folder / f"{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files, study, series


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def measure(
    node: SegNode, orthanc: Orthanc, files: list[Path], series_uid: str, study_uid: str
) -> dict[str, float]:
    orthanc_id = orthanc.upload(files)
    orthanc.store_to("segnode", orthanc_id)
    job_id = wait_until(lambda: (j := node.jobs(series_uid)) and j[-1].id, 120, "job created")

    def finished() -> bool:
        state = node.job(job_id).state
        if state == "failed":
            row = node.job(job_id)
            raise SystemExit(f"job {job_id} failed at {row.failed_stage}: [{row.reason}] {row.detail}")
        return state == "done"

    wait_until(finished, 3600, f"job {job_id} done", interval_s=0.5)
    with node.db.read() as session:
        first_rx, last_rx = session.execute(
            select(func.min(Instance.received_at), func.max(Instance.received_at)).where(
                Instance.series_instance_uid == series_uid
            )
        ).one()
        series = session.get_one(Series, series_uid)
        completed = series.completed_at
        events = list(session.scalars(select(Event).where(Event.job_id == job_id).order_by(Event.id)))
    sent = [e for e in events if e.what == "send_attempt" and e.outcome == "success"][-1]
    to_sending = [
        e for e in events if e.what == "job_transition" and str(e.detail).startswith("encoding -> sending")
    ]
    timings: dict[str, Any] = node.timings(job_id)
    conv, segm, enc = timings["converting"], timings["segmenting"], timings["encoding"]
    assert completed is not None and first_rx is not None and last_rx is not None
    created = node.job(job_id).created_at
    seg_series = orthanc.find_series(study_uid, "SEG")
    assert len(seg_series) == 1, f"{len(seg_series)} SEG series in Orthanc"
    total = (sent.at - last_rx).total_seconds()
    result = {
        "anchor: receive series (first -> last instance)": (last_rx - first_rx).total_seconds(),
        "completion (last instance -> series complete)": (completed - last_rx).total_seconds(),
        "dispatch (job created -> converting starts)": (_at(conv["started_at"]) - created).total_seconds(),
        "converting (read spool, route, build volume)": conv["seconds"],
        "queue -> segmenting starts": (_at(segm["started_at"]) - _at(conv["ended_at"])).total_seconds(),
        "segmenting: inference (engine total)": segm["inference_s"],
        "segmenting: other (save label map)": segm["seconds"] - segm["inference_s"],
        "queue -> encoding starts": (_at(enc["started_at"]) - _at(segm["ended_at"])).total_seconds(),
        "encoding: SEG (highdicom), write outbox": enc["seconds"] - enc.get("validation_s", 0.0),
        "encoding: dciodvfy validation": enc.get("validation_s", 0.0),
        "sending (C-STORE to Orthanc, incl. wait)": (sent.at - to_sending[-1].at).total_seconds(),
        "TOTAL last instance -> SEG stored": total,
        "TOTAL without inference": total - segm["inference_s"],
    }
    logger.info("job %d timings: %s", job_id, json.dumps(timings)[:2000])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--step", type=float, default=1.0, help="slice step in mm")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the real MR image to repeat")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="segnode-bench-") as name:
        tmp = Path(name)
        with orthanc_and_segnode(tmp) as (orthanc, node):
            for run in range(args.runs):
                files, study, series = make_series(args.source, args.slices, args.step, tmp / f"series{run}")
                start = time.monotonic()
                rows.append(measure(node, orthanc, files, series, study))
                logger.warning("run %d: %.1f s wall", run + 1, time.monotonic() - start)
    source = pydicom.dcmread(args.source, stop_before_pixels=True)
    sys.stdout.write(
        f"\nSegNode end-to-end latency with Orthanc: {args.slices} slices of {source.Rows}x{source.Columns} "
        f"({args.source.parent.name}), tiny test models on the CPU, {args.runs} run(s)\n\n"
    )
    anchor_key = "anchor: receive series (first -> last instance)"
    width = max(len(k) for k in rows[0])
    header = (
        f"{'stage':<{width}}  " + "  ".join(f"run {n + 1:>2} s" for n in range(len(rows))) + "   x anchor"
    )
    sys.stdout.write(header + "\n" + "-" * len(header) + "\n")
    for key in rows[0]:
        values = [r[key] for r in rows]
        mean = sum(values) / len(values)
        anchor = sum(r[anchor_key] for r in rows) / len(rows)
        ratio = mean / anchor if anchor > 0 else float("nan")
        sys.stdout.write(f"{key:<{width}}  " + "  ".join(f"{v:8.3f}" for v in values) + f"   {ratio:8.2f}\n")
    best = min(r["TOTAL without inference"] for r in rows)
    sys.stdout.write(f"\nGoal: everything but inference < 3 s; measured {best:.2f} s (best run)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
