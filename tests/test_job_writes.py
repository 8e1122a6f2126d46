"""One module writes job rows: ``dicom_node/jobs/store.py`` (``JobStore``). Elsewhere a job row is read, and
its changes are asked of the store. The test reads the code (ast): no ``Job(...)`` row is made, no
``insert``/``update``/``delete`` of ``Job`` is built, and no column that only the jobs table has is assigned
outside the store."""

from __future__ import annotations

import ast

from dicom_node.audit.tables import Base, Job
from tests.support.paths import ROOT

STORE = ROOT / "dicom_node" / "jobs" / "store.py"
#: Columns of the jobs table that no other table has: assigning one is writing a job row.
JOB_ONLY_COLUMNS = frozenset(
    {c.key for c in Job.__table__.columns}
    - {c.key for t in Base.metadata.sorted_tables if t.name != Job.__tablename__ for c in t.columns}
)


def job_writes(source: str) -> list[str]:
    """Where ``source`` writes a job row, as ``line: what``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else None
            first = node.args[0] if node.args else None
            if name == "Job":
                found.append((node.lineno, "Job(...)"))
            elif name in {"insert", "update", "delete"} and isinstance(first, ast.Name) and first.id == "Job":
                found.append((node.lineno, f"{name}(Job)"))
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and target.attr in JOB_ONLY_COLUMNS
                and not (isinstance(target.value, ast.Name) and target.value.id == "self")
            ):
                found.append((target.lineno, f".{target.attr} = ..."))
    return [f"{line}: {what}" for line, what in sorted(found)]


def test_the_check_finds_job_writes() -> None:
    source = "\n".join(
        ["row = Job(state='queued')", "session.execute(update(Job).values(worker=None))", "job.worker = w"]
    )
    assert job_writes(source) == ["1: Job(...)", "2: update(Job)", "3: .worker = ..."]
    assert job_writes("self.worker = worker\nseries.state = 'open'\nselect(Job)\n") == []


def test_only_the_store_writes_job_rows() -> None:
    writers = {}
    for path in sorted((ROOT / "dicom_node").rglob("*.py")):
        if path == STORE:
            continue
        found = job_writes(path.read_text(encoding="utf-8"))
        if found:
            writers[str(path.relative_to(ROOT))] = found
    assert not writers, f"job rows written outside {STORE.relative_to(ROOT)}: {writers}"
    assert job_writes(STORE.read_text(encoding="utf-8")), (
        "the store itself writes no job row: the check is stale"
    )
