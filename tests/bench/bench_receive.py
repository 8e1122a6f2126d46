"""Benchmark: receiving 200 real MR instances, SegNode (durable) against three anchors at their best.

DCMTK storescu sends the same 200 instances (a real cine MR series of ../shared/data/mri, else the series
of tests/data/mri) to each receiver, with 1 association and with 4 concurrent associations (4 storescu
processes, 50 instances each), in one run, rounds alternating between the receivers so that they share
the machine's state (load, caches) fairly. Each receiver starts empty for every round:

* **DCMTK storescp**, with ``TCP_NODELAY=1`` in the environment of storescp and of storescu (without it
  each C-STORE waits on a delayed ACK), writing files without fsync;
* **Orthanc** with its default SQLite index and file storage (``TCP_NODELAY=1`` too: its DICOM server is
  DCMTK's);
* **bare pynetdicom**: a storage SCP of the library SegNode is built on that writes each data set as it
  was received to a file (no fsync, no database, ``TCP_NODELAY`` on its sockets): the library's ceiling;
* **SegNode (durable)**: ``NodeService`` as ``segnode serve`` runs it, job processing off (receiving is
  measured): a C-STORE gets Success only once the file and its folder are fsynced and its audit record
  is committed (SQLite WAL, synchronous=FULL).

It prints instances/s per receiver (median over rounds, and the range) and the ratios SegNode / bare
pynetdicom and SegNode / Orthanc, with the load average. Goals (1 association): SegNode >= 0.8x bare
pynetdicom and >= 1.0x Orthanc.

    python tests/bench/bench_receive.py [--rounds 5] [--instances 200] [--only SegNode,bare]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.dcmtk import dcmtk, storescp  # noqa: E402
from tests.support.dicom import wait_for_echo  # noqa: E402
from tests.support.orthanc import Orthanc  # noqa: E402
from tests.support.paths import SHARED_MRI, TEST_MRI  # noqa: E402

#: A real series of 240 instances (GE, short-axis cine); the first ``--instances`` are sent.
CINE_SERIES = SHARED_MRI / "sunnybrook_cardiac" / "SCD0000101_CINESAX"

Receiver = Callable[[Path], contextlib.AbstractContextManager[tuple[int, str]]]


def instances(count: int) -> list[Path]:
    """``count`` real MR instances: the cine series of ../shared, else every series of tests/data/mri."""
    if CINE_SERIES.is_dir():
        files = sorted(CINE_SERIES.glob("*.dcm"))
    else:
        files = sorted(p for p in TEST_MRI.rglob("*.dcm") if "ax_asc_35sl_9_transfer" not in str(p))
    if len(files) < count:
        raise SystemExit(f"only {len(files)} instances found, {count} asked for")
    return files[:count]


def send(files: list[Path], port: int, called: str, associations: int) -> float:
    """Seconds from starting ``associations`` storescu processes (files dealt out among them) until the
    last one has finished, every instance answered with Success."""
    chunks = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    senders = [
        subprocess.Popen(
            [dcmtk("storescu"), "-aet", "STORESCU", "-aec", called, "127.0.0.1", str(port), *map(str, chunk)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for chunk in chunks
    ]
    outputs = [process.communicate()[0] for process in senders]
    elapsed = time.perf_counter() - start
    for process, output in zip(senders, outputs, strict=True):
        if process.returncode != 0:
            raise SystemExit(f"storescu to {called} failed:\n{output.decode(errors='replace')}")
    return elapsed


@contextlib.contextmanager
def segnode(work: Path) -> Iterator[tuple[int, str]]:
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
    service = NodeService(config, process_jobs=False)
    service.start()
    try:
        yield service.port, "SEGNODE"
    finally:
        service.stop()


@contextlib.contextmanager
def bare_pynetdicom(work: Path) -> Iterator[tuple[int, str]]:
    """pynetdicom's storage SCP at its simplest: each data set written to a file as received."""
    import socket

    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    folder = work / "bare"
    folder.mkdir()

    def on_open(event: evt.Event) -> None:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_store(event: evt.Event) -> int:
        with open(folder / event.request.AffectedSOPInstanceUID, "wb") as out:
            out.write(event.encoded_dataset(include_meta=True))
        return 0x0000

    ae = AE(ae_title="BARE")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    ae.maximum_pdu_size = 262144
    server = ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[(evt.EVT_CONN_OPEN, on_open), (evt.EVT_C_STORE, on_store)],
    )
    try:
        port = int(server.server_address[1])
        wait_for_echo(port, "BARE", "bare pynetdicom")
        yield port, "BARE"
    finally:
        server.shutdown()


@contextlib.contextmanager
def dcmtk_storescp(work: Path) -> Iterator[tuple[int, str]]:
    with storescp(work / "storescp") as peer:  # TCP_NODELAY=1 inherited (main)
        yield peer.port, peer.ae_title


@contextlib.contextmanager
def orthanc(work: Path) -> Iterator[tuple[int, str]]:
    server = Orthanc(work / "orthanc", {})
    server.start()
    try:
        yield server.dicom_port, Orthanc.AE_TITLE
    finally:
        server.stop()


RECEIVERS: dict[str, Receiver] = {
    "DCMTK storescp": dcmtk_storescp,
    "Orthanc": orthanc,
    "bare pynetdicom": bare_pynetdicom,
    "SegNode (durable)": segnode,
}


#: Instances written by the durable-floor step before each round.
FLOOR_SAMPLES = 50


def durable_floor(folder: Path, files: list[Path]) -> str:
    """What durability alone costs per instance on this disk now: writing an instance of the series and
    fsyncing it, fsyncing its folder, and one SQLite commit (WAL, synchronous=FULL), each as the node does
    it once per instance (medians in ms)."""
    import sqlite3

    data = files[len(files) // 2].read_bytes()
    folder.mkdir()
    # a sample, not one per instance: the flushes of this step come out of the same disk's budget (a virtual
    # disk throttles after a burst of them: every flush then takes ~4 ms) right before the receivers run
    samples = min(len(files), FLOOR_SAMPLES)
    writes, folders, commits = [], [], []
    connection = sqlite3.connect(folder / "floor.db", isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for number in range(samples):
            start = time.perf_counter()
            descriptor = os.open(folder / f"{number}.dcm", os.O_CREAT | os.O_WRONLY, 0o600)
            os.write(descriptor, data)
            os.fsync(descriptor)
            os.close(descriptor)
            middle = time.perf_counter()
            os.fsync(directory)
            end = time.perf_counter()
            connection.execute("INSERT INTO t (v) VALUES (?)", (str(number) * 64,))
            commits.append(time.perf_counter() - end)
            writes.append(middle - start)
            folders.append(end - middle)
    finally:
        os.close(directory)
        connection.close()
    parts = [statistics.median(v) * 1000 for v in (writes, folders, commits)]
    return (
        f"durable floor per instance (median): write+fsync {parts[0]:.2f} ms, "
        f"folder fsync {parts[1]:.2f} ms, "
        f"SQLite commit {parts[2]:.2f} ms: {sum(parts):.2f} ms, at most {1000 / sum(parts):.0f} instances/s "
        "for one association"
    )


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated receiver name prefixes to run")
    args = parser.parse_args(argv)
    chosen = {
        name: make
        for name, make in RECEIVERS.items()
        if not args.only or any(name.startswith(prefix.strip()) for prefix in args.only.split(","))
    }
    # read by DCMTK's dcmnet (storescu, storescp, and Orthanc, which is built on it): no Nagle delay
    os.environ["TCP_NODELAY"] = "1"
    files = instances(args.instances)
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    concurrency = (1, 4)
    rates: dict[tuple[str, int], list[float]] = {(name, n): [] for name in chosen for n in concurrency}
    loads = [load_average()]
    floors = []
    with tempfile.TemporaryDirectory(prefix="segnode-bench-") as tmp:
        for round_number in range(args.rounds):
            floors.append(durable_floor(Path(tmp) / f"floor-{round_number}", files))
            for associations in concurrency:
                for name, make in chosen.items():
                    work = Path(tmp) / f"{round_number}-{associations}-{name.split()[0]}"
                    work.mkdir()
                    with make(work) as (port, called):
                        seconds = send(files, port, called, associations)
                    rates[(name, associations)].append(len(files) / seconds)
            loads.append(load_average())
    print(
        f"{len(files)} MR instances from {files[0].parent} ({megabytes:.1f} MB), storescu -> 127.0.0.1 "
        f"with TCP_NODELAY=1, {args.rounds} rounds alternating; load average (1/5/15 min) per round: "
        + "; ".join(loads)
    )
    for line in floors:
        print(line)
    print(f"{'receiver':<20} {'assocs':>6} {'median inst/s':>14} {'range':>16}")
    for (name, associations), values in rates.items():
        low, high = min(values), max(values)
        print(f"{name:<20} {associations:>6} {statistics.median(values):>14.1f} {low:>7.1f}-{high:<8.1f}")
    node = "SegNode (durable)"
    for associations in concurrency:
        for anchor, goal in (("bare pynetdicom", 0.8), ("Orthanc", 1.0)):
            if (node, associations) in rates and (anchor, associations) in rates:
                ratio = statistics.median(rates[(node, associations)]) / statistics.median(
                    rates[(anchor, associations)]
                )
                target = f" (goal >= {goal:.1f}x)" if associations == 1 else ""
                print(f"SegNode / {anchor}, {associations} association(s): {ratio:.2f}x{target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
