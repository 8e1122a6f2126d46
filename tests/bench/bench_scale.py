"""Throughput of a SegNode cluster with 1 and with 2 CPU workers, and of the embedded node, in one run.

Each run sends ``--series`` series (default 12; copies of a real sagittal T2 series with their own UIDs)
to the node with one association each, all at once, and measures from the first C-STORE to the last job
``done`` (its SEG stored in a real Orthanc). The cluster runs on real PostgreSQL and Redis with one receiver
and 1 or 2 ``segnode worker`` processes taking every queue, each with ``--threads`` torch threads (default
1), so that the ratio says how the work spreads over workers; the goal is >= 1.7x with 2 workers on 2 or
more free cores. The anchor is the embedded node (``segnode serve``, SQLite, threads) on the same series,
the way one machine runs SegNode without a cluster: with its default (torch on every core) and with
``--threads`` torch threads like a worker (on a loaded machine, torch's threads on every core wait for
each other far longer than one thread computes).

Run: ``python tests/bench/bench_scale.py [--series 12] [--threads 1] [--fast]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.support

from dicom_node.audit.database import Database
from dicom_node.jobs.store import JobState
from tests.cluster.cluster_support import CALLER, Cluster, cluster_settings
from tests.support.audit import jobs
from tests.support.orthanc import Orthanc
from tests.support.paths import T2_SAG
from tests.support.scu import send_series
from tests.support.series import RenamedSeries, renamed_series
from tests.support.serve import ServeProcess
from tests.support.settings import write_settings
from tests.support.waiting import wait_until

TIMEOUT_S = 3600


def make_series(folder: Path, count: int, tag: str) -> list[RenamedSeries]:
    return [renamed_series(T2_SAG, folder / f"{tag}{n}", f"{tag}{n}") for n in range(count)]


def run_batch(
    ports: list[int], batch: list[RenamedSeries], db: Database, details: Callable[[], str]
) -> float:
    """Send every series (one association each, round robin over ``ports``); seconds until all are done."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(
            pool.map(lambda n: send_series(ports[n % len(ports)], batch[n].files, CALLER), range(len(batch)))
        )
    assert all(set(s) == {0} for s in statuses), statuses

    def all_done() -> bool:
        states = []
        for source in batch:
            found = jobs(db, source.series_instance_uid)
            if found and JobState(found[-1].state) is JobState.failed:
                raise AssertionError(f"job {found[-1].id} failed: [{found[-1].reason}] {found[-1].detail}")
            states.append(bool(found) and JobState(found[-1].state) is JobState.done)
        return all(states)

    wait_until(all_done, TIMEOUT_S, f"{len(batch)} jobs done", interval_s=0.5, details=details)
    return time.perf_counter() - started


def cluster_runs(folder: Path, count: int, threads: int, fast: bool) -> dict[int, float]:
    """Seconds for ``count`` series with 1 worker, then (new series) with 2 workers."""
    keys: dict[str, Any] = {
        "inference.cpu_threads": threads,
        "cluster.visibility_timeout_s": 3600,
        "cluster.reconcile_after_s": 300,
        "cluster.lease_s": 120,
        "cluster.heartbeat_s": 10,
        "routes": [
            {
                "name": "mr_total",
                "match": {"modality": "MR"},
                "action": {
                    "tasks": [{"name": "total_mr", "fast": fast}],
                    "outputs": ["seg"],
                    "destinations": ["orthanc"],
                },
            }
        ],
    }
    cluster = Cluster.start(folder / "cluster", receivers=1, **keys)
    seconds: dict[int, float] = {}
    try:
        for workers in (1, 2):
            for n in range(workers):
                cluster.worker(f"w{workers}-{n}").start()
            batch = make_series(folder / f"series-{workers}", count, f"scale{workers}w")
            seconds[workers] = run_batch(
                [r.port for r in cluster.receivers], batch, cluster.db, cluster.details
            )
            cluster.stop_workers()
    finally:
        cluster.stop()
    return seconds


def embedded_run(folder: Path, count: int, fast: bool, threads: int | None = None) -> float:
    """Seconds for ``count`` series on the embedded node (SQLite, threads; torch on every core, the
    default, or on ``threads`` threads)."""
    orthanc = Orthanc(folder / "orthanc", {})
    orthanc.start()
    try:
        settings = cluster_settings(
            folder, f"sqlite:///{folder / 'segnode.db'}", "redis://unused", orthanc.dicom_port
        )
        settings.pop("cluster")
        settings["inference"].pop("cpu_threads")
        if threads is not None:
            settings["inference"]["cpu_threads"] = threads
        settings["routes"][0]["action"]["tasks"] = [{"name": "total_mr", "fast": fast}]
        node = ServeProcess(folder / "node", write_settings(folder / "segnode.yaml", settings))
        node.start()
        db = Database(f"sqlite:///{folder / 'segnode.db'}")
        try:
            return run_batch(
                [node.port], make_series(folder / "series", count, "embedded"), db, node.log_tail
            )
        finally:
            node.stop()
            db.dispose()
    finally:
        orthanc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each cluster worker")
    parser.add_argument("--fast", action="store_true", help="the 3 mm model instead of the two part models")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="segnode-bench-scale-"))
    try:
        embedded = embedded_run(folder / "embedded", args.series, args.fast)
        pinned = embedded_run(folder / "embedded-pinned", args.series, args.fast, args.threads)
        cluster = cluster_runs(folder, args.series, args.threads, args.fast)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{args.series} series, tiny models ({'3 mm' if args.fast else 'part models'}), CPU")
    print(f"{'node':<40}{'seconds':>10}{'series/hour':>14}{'ratio':>8}")
    rows = [
        ("embedded default (torch on all cores)", embedded, ""),
        (f"embedded, {args.threads} torch thread(s)", pinned, ""),
        *(
            (f"cluster, {w} worker(s) x {args.threads} thread(s)", s, f"{cluster[1] / s:.2f}x")
            for w, s in cluster.items()
        ),
    ]
    for label, seconds, ratio in rows:
        print(f"{label:<40}{seconds:>10.1f}{args.series / seconds * 3600:>14.0f}{ratio:>8}")
    print(f"2 workers / 1 worker throughput: {cluster[1] / cluster[2]:.2f}x (goal >= 1.7x on 2+ free cores)")
    print(f"cluster with 2 workers / embedded default: {embedded / cluster[2]:.2f}x")
    print(f"load average after the run: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
