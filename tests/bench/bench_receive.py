"""Benchmark: receiving an MR series with DCMTK storescu, SegNode vs DCMTK storescp on the same machine.

A series of ``--instances`` (default 400) is made by cloning one real MR instance of tests/data/mri with new
Study/Series/SOP Instance UIDs. storescu sends it, in the same run, to

* SegNode (``NodeService`` as ``segnode serve`` runs it: durable writes, i.e. fsync of every file and its
  folder, SQLite WAL commit with synchronous=FULL, before each Success), and
* DCMTK storescp (the anchor; it writes files without fsync),

alternating ``--rounds`` times, and prints instances/s and MB/s (median over rounds) and the ratio.
Goal: SegNode >= 0.5x storescp.

    python tests/bench/bench_receive.py [--instances 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tests" / "data" / "mri" / "prostatex" / "ProstateX-0000_3.000000-t2tsesag-87368" / "1-01.dcm"


def dcmtk(name: str) -> str:
    for candidate in (f"/usr/bin/{name}", shutil.which(name)):
        if candidate and Path(candidate).exists():
            version = subprocess.run([candidate, "--version"], capture_output=True, text=True, check=False)
            if "dcmtk" in version.stdout.lower():
                return candidate
    raise SystemExit(f"DCMTK's {name} is not installed (apt-get install dcmtk)")


def clone_series(count: int, folder: Path) -> list[Path]:
    """``count`` copies of one real MR instance with new Study/Series/SOP Instance UIDs."""
    folder.mkdir(parents=True)
    ds = pydicom.dcmread(SOURCE)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    paths = []
    for number in range(1, count + 1):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        path = folder / f"{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def send(files: list[Path], port: int, called: str) -> float:
    """Seconds storescu needs to send ``files`` in one association (association set-up included)."""
    start = time.perf_counter()
    result = subprocess.run(
        [dcmtk("storescu"), "-aet", "STORESCU", "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"storescu to {called} failed:\n{result.stdout}{result.stderr}")
    return elapsed


@contextlib.contextmanager
def segnode(work: Path) -> Iterator[tuple[int, object]]:
    from config.loader import parse_config
    from dicom_node.service import NodeService

    config = parse_config(
        {
            "node": {"ae_titles": [{"ae_title": "SEGNODE", "allowed_callers": [{"ae_title": "STORESCU"}]}]},
            "network": {"bind_address": "127.0.0.1", "port": 0},
            "storage": {"spool_dir": str(work / "spool"), "min_free_space_mb": 100},
            "database": {"url": f"sqlite:///{work / 'audit.db'}"},
        },
        "bench",
        environ={},
    )
    service = NodeService(config)
    service.start()
    try:
        yield service.port, service
    finally:
        service.stop()


@contextlib.contextmanager
def storescp(work: Path) -> Iterator[int]:
    out = work / "storescp"
    out.mkdir(parents=True)
    port = free_port()
    process = subprocess.Popen(
        [dcmtk("storescp"), "-aet", "STORESCP", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.instances < 300:
        parser.error("--instances must be at least 300")

    with tempfile.TemporaryDirectory(prefix="segnode-bench-") as tmp:
        base = Path(tmp)
        times: dict[str, list[float]] = {"SegNode (durable)": [], "DCMTK storescp": []}
        sizes = 0
        for round_number in range(args.rounds):
            # a fresh series per round and target: no duplicate handling, nothing cached in the receivers
            for target in times:
                files = clone_series(args.instances, base / f"series-{round_number}-{target[:3]}")
                sizes = sum(p.stat().st_size for p in files)
                work = base / f"work-{round_number}-{target[:3]}"
                work.mkdir()
                if target.startswith("SegNode"):
                    with segnode(work) as (port, _service):
                        times[target].append(send(files, port, "SEGNODE"))
                else:
                    with storescp(work) as port:
                        times[target].append(send(files, port, "STORESCP"))
                shutil.rmtree(files[0].parent)
                shutil.rmtree(work)

        megabytes = sizes / 1e6
        print(
            f"MR series: {args.instances} instances cloned from {SOURCE.name} ({megabytes:.1f} MB), "
            f"{args.rounds} rounds, median time; storescu -> 127.0.0.1"
        )
        print(f"{'receiver':<20} {'seconds':>8} {'inst/s':>9} {'MB/s':>8} {'ratio':>7}")
        anchor = statistics.median(times["DCMTK storescp"])
        for target, values in times.items():
            seconds = statistics.median(values)
            print(
                f"{target:<20} {seconds:>8.2f} {args.instances / seconds:>9.1f} {megabytes / seconds:>8.1f} "
                f"{anchor / seconds:>6.2f}x"
            )
        print("ratio = storescp time / receiver time (goal for SegNode: >= 0.50x)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
