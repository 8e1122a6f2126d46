"""Alembic migrations: packaged, upgrade keeps existing rows, head matches the ORM models."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import IntegrityError

from dicom_node.audit.database import Database, alembic_config
from dicom_node.audit.tables import Base


def _series_and_job(conn: Connection, state: str) -> None:
    """A complete series (1.2.3.4) and its job (id 1) in ``state``, as the first schema has them."""
    conn.execute(
        text(
            "INSERT INTO series (series_instance_uid, study_instance_uid, state, instance_count, "
            "first_received_at, last_received_at) VALUES ('1.2.3.4', '1.2.3', 'complete', 1, "
            "'2026-01-05 08:00:00', '2026-01-05 08:00:00')"
        )
    )
    conn.execute(
        text(
            "INSERT INTO jobs (series_instance_uid, study_instance_uid, state, created_at, updated_at) "
            "VALUES ('1.2.3.4', '1.2.3', :state, '2026-01-05 08:00:10', '2026-01-05 08:00:10')"
        ),
        {"state": state},
    )


def test_upgrade_from_the_first_schema_keeps_existing_rows(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    db.upgrade("0001")
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO associations (calling_ae_title, called_ae_title, peer_address, peer_port, "
                "started_at, result, instances_received, bytes_received) "
                "VALUES ('PACS', 'SEGNODE', '10.0.0.5', 4242, '2026-01-05 08:00:00', 'released', 1, 1234)"
            )
        )
        _series_and_job(conn, "queued")
        conn.execute(
            text(
                "INSERT INTO events (at, what, outcome, config_hash) "
                "VALUES ('2026-01-05 08:00:00', 'node_started', 'success', 'abc')"
            )
        )
    assert "ix_events_at" not in {i["name"] for i in inspect(db.engine).get_indexes("events")}

    db.upgrade("head")

    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT calling_ae_title, bytes_received FROM associations")).all() == [
            ("PACS", 1234)
        ]
        assert conn.execute(text("SELECT state FROM jobs")).all() == [("queued",)]
        assert conn.execute(text("SELECT what FROM events")).all() == [("node_started",)]
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head
    assert "ix_events_at" in {i["name"] for i in inspect(db.engine).get_indexes("events")}


def test_head_schema_matches_the_orm_models(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'new.db'}")
    db.upgrade("head")
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_sqlite_runs_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'wal.db'}")
    db.upgrade("head")
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar_one() == 2  # FULL
    assert (tmp_path / "wal.db-wal").exists()


def test_migration_scripts_are_packaged_with_dicom_node() -> None:
    location = Path(alembic_config().get_main_option("script_location") or "")
    assert (location / "env.py").is_file()
    assert sorted(p.name for p in (location / "versions").glob("0*.py"))[:2] == [
        "0001_initial.py",
        "0002_audit_query_indexes.py",
    ]


def test_upgrade_to_per_kind_deliveries_keeps_the_seg_deliveries(tmp_path: Path) -> None:
    """0004 -> 0005: a delivery made before is the SEG's; afterwards a job has one delivery per destination
    and kind, and the same kind twice to one destination is refused."""
    db = Database(f"sqlite:///{tmp_path / 'deliveries.db'}")
    db.upgrade("0004")
    with db.engine.begin() as conn:
        _series_and_job(conn, "sending")
        conn.execute(
            text(
                "INSERT INTO deliveries (job_id, destination, state, attempts, last_outcome) "
                "VALUES (1, 'pacs', 'failed', 3, 'peer_unreachable')"
            )
        )
    db.upgrade("0005")
    with db.engine.begin() as conn:
        assert conn.execute(text("SELECT destination, kind, state, attempts FROM deliveries")).all() == [
            ("pacs", "seg", "failed", 3)
        ]
        conn.execute(
            text(
                "INSERT INTO deliveries (job_id, destination, kind, state, attempts) "
                "VALUES (1, 'pacs', 'sr', 'pending', 0)"
            )
        )
    with pytest.raises(IntegrityError), db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO deliveries (job_id, destination, kind, state, attempts) "
                "VALUES (1, 'pacs', 'sr', 'pending', 0)"
            )
        )
    cfg = alembic_config(db.url)
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0004")
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT destination, state FROM deliveries")).all() == [("pacs", "failed")]
    db.dispose()
