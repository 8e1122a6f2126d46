"""Load benchmark: a node receiving several series on concurrent associations while its pipeline works.

Two measures, each with its anchor from the same run:

* **C-STORE instances/s** into ``NodeService`` (durable writes, audit rows) with ``--associations``
  concurrent associations (each sends its own series), vs one association sending the same instances (anchor).
* **series/hour** of the whole pipeline (receive, convert, segment with the tiny test models on the CPU,
  encode the SEG, C-STORE it to DCMTK's storescp): the series of all associations, wall time from the first
  C-STORE to the last job done; the anchor is the serial rate, 3600 s over the mean of each job's own stage
  times (what a node without overlapping stages would do).

The series are three small real MR series of tests/data/mri (the sagittal one twice), each copy with new UIDs.
Peak RSS of the process is printed too.

    python tests/bench/bench_load.py [--associations 4] [--copies 1] [--no-pipeline]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.support

from sqlalchemy import select

from config.loader import parse_config
from dicom_node.audit.tables import Job
from dicom_node.service import NodeService
from tests.support.dcmtk import storescp
from tests.support.paths import MODELS, PD_TRA, T2_COR, T2_SAG
from tests.support.scu import StoreLog, associate, store
from tests.support.series import RenamedSeries, renamed_series
from tests.support.settings import node_settings

#: The cardiac series of the test data is not used: its slices have one Frame of Reference each (no SEG).
SOURCES = [T2_SAG, T2_COR, PD_TRA, T2_SAG]


def config_for(tmp: Path, pacs_port: int | None) -> Any:
    data = node_settings(tmp)
    data["network"]["max_associations"] = 16
    # a short quiet period: the cardiac series announces 280 Images in Acquisition and brings 12
    data["completion"] = {"quiet_period_s": 2, "on_association_release": True}
    if pacs_port is not None:
        data["destinations"] = {"pacs": {"ae_title": "STORESCP", "host": "127.0.0.1", "port": pacs_port}}
        data["routes"] = [
            {
                "name": "mr",
                "match": {"modality": "MR"},
                "action": {"tasks": ["total_mr"], "outputs": ["seg"], "destinations": ["pacs"]},
            }
        ]
        data["pipeline"] = {
            "work_dir": str(tmp / "work"),
            "outbox_dir": str(tmp / "outbox"),
            "poll_interval_s": 0.1,
        }
        data["inference"] = {"weights_dir": str(MODELS), "device": "cpu"}
    return parse_config(data, "bench.yaml", environ={})


def send_concurrently(port: int, groups: list[list[RenamedSeries]]) -> float:
    """Each group on its own association, all at once; returns the wall seconds; every status must be 0."""
    logs = [StoreLog() for _ in groups]
    start = threading.Barrier(len(groups) + 1)

    def run(index: int) -> None:
        files = [f for s in groups[index] for f in s.files]
        assoc = associate(port, "PYSCU", files=files)
        start.wait()
        store(assoc, files, logs[index])
        assoc.release()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(groups))]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    statuses = {s for log in logs for s in log.statuses.values()}
    if statuses != {0}:
        raise SystemExit(f"C-STORE statuses other than Success: {sorted(statuses)}")
    return seconds


def receive_rate(tmp: Path, series: list[RenamedSeries], associations: int) -> float:
    service = NodeService(config_for(tmp, None), process_jobs=False, completion_interval_s=0)
    service.start()
    try:
        groups = [series[n::associations] for n in range(associations)]
        seconds = send_concurrently(service.port, groups)
    finally:
        service.stop()
    return sum(len(s.files) for s in series) / seconds


def pipeline_rate(tmp: Path, series: list[RenamedSeries], associations: int) -> tuple[float, float, int]:
    with storescp(tmp / "pacs") as pacs:
        service = NodeService(config_for(tmp, pacs.port), completion_interval_s=0.2)
        service.start()
        try:
            began = time.perf_counter()
            send_concurrently(service.port, [series[n::associations] for n in range(associations)])
            while True:
                with service.db.read() as session:
                    jobs = list(session.scalars(select(Job)))
                if len(jobs) == len(series) and all(j.state in ("done", "failed") for j in jobs):
                    break
                time.sleep(0.5)
            wall = time.perf_counter() - began
        finally:
            service.stop()
    failed = [j for j in jobs if j.state != "done"]
    if failed:
        raise SystemExit(f"{len(failed)} job(s) failed: {[(j.reason, j.detail) for j in failed]}")
    stage_sums = []
    for job in jobs:
        timings = json.loads(job.stage_timings or "{}")
        stage_sums.append(
            sum(
                float(timings[s]["seconds"]) for s in ("converting", "segmenting", "encoding") if s in timings
            )
        )
    serial = 3600.0 / (sum(stage_sums) / len(stage_sums))
    return len(series) / wall * 3600.0, serial, len(jobs)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--copies", type=int, default=1, help="copies of each of the 4 series (new UIDs)")
    parser.add_argument("--no-pipeline", action="store_true", help="measure receiving only")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Invalid value for VR UI")  # the cardiac series' UIDs
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="segnode-bench-load-") as folder:
        tmp = Path(folder)
        series = [
            renamed_series(source, tmp / "series" / f"{n}_{c}", f"bench-load-{n}-{c}")
            for c in range(args.copies)
            for n, source in enumerate(SOURCES)
        ]
        instances = sum(len(s.files) for s in series)
        concurrent = receive_rate(tmp / "recv_n", series, args.associations)
        single = receive_rate(tmp / "recv_1", series, 1)
        rows = [
            (
                f"C-STORE instances/s ({instances} instances)",
                f"{args.associations} assoc",
                concurrent,
                "1 assoc",
                single,
            )
        ]
        if not args.no_pipeline:
            rate, serial, jobs = pipeline_rate(tmp / "pipeline", series, args.associations)
            rows.append(
                (f"series/hour ({jobs} series, tiny models, CPU)", "pipelined", rate, "serial", serial)
            )
    print(f"{'measure':<46} {'SegNode':>18} {'anchor':>18} {'ratio':>7}")
    for name, label, value, anchor_label, anchor in rows:
        print(f"{name:<46} {value:>9.1f} {label:>8} {anchor:>9.1f} {anchor_label:>8} {value / anchor:>7.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the benchmark process (node included): {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
