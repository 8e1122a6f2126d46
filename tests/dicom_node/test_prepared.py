"""Statements run on the DBAPI cursor (dicom_node.audit.prepared) write and read what SQLAlchemy's
``Connection.execute`` would, in the caller's transaction, and fail with SQLAlchemy's exceptions (real
SQLite file; the PostgreSQL dialect's compiled form without a server, the server in test_postgresql)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import Table, bindparam, insert, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from dicom_node.audit.database import Database
from dicom_node.audit.prepared import Prepared
from dicom_node.audit.tables import Association, Series

SERIES = cast(Table, Series.__table__)
ASSOCIATIONS = cast(Table, Association.__table__)
WHEN = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=timezone(timedelta(hours=2)))
INSERT_SERIES = SERIES.insert().values({c.key: bindparam(c.key) for c in SERIES.columns})
COUNT = (
    SERIES.update()
    .where(SERIES.c.series_instance_uid == bindparam("b_uid"))
    .values(instance_count=SERIES.c.instance_count + 1, last_received_at=bindparam("b_now"))
)
STATE = select(SERIES.c.state, SERIES.c.instance_count).where(
    SERIES.c.series_instance_uid == bindparam("b_uid")
)


def series_row(uid: str) -> dict[str, object]:
    return {
        "series_instance_uid": uid,
        "study_instance_uid": "1.2.3",
        "patient_id": None,
        "patient_name": None,
        "patient_birth_date": None,
        "modality": "MR",
        "state": "open",
        "instance_count": 0,
        "expected_count": None,
        "first_received_at": WHEN,
        "last_received_at": WHEN,
        "completed_at": None,
        "completed_by": None,
    }


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'audit.db'}")
    database.upgrade()
    return database


def stored(db: Database, uid: str) -> tuple[object, ...]:
    """The row as SQLite holds it (raw text) and as the ORM reads it back."""
    with db.engine.connect() as connection:
        raw = connection.execute(
            text("SELECT instance_count, last_received_at FROM series WHERE series_instance_uid = :u"),
            {"u": uid},
        ).one()
    with db.read() as session:
        row = session.get_one(Series, uid)
        return (*raw, row.last_received_at)


def test_rows_written_and_read_as_connection_execute_does(db: Database) -> None:
    with db.engine.begin() as connection:
        connection.execute(INSERT_SERIES, series_row("1.2.3.1"))
        connection.execute(COUNT, {"b_uid": "1.2.3.1", "b_now": WHEN + timedelta(seconds=1)})
    with db.engine.begin() as connection:
        assert Prepared(INSERT_SERIES).execute(connection, series_row("1.2.3.2")) == 1
        assert (
            Prepared(COUNT).execute(connection, {"b_uid": "1.2.3.2", "b_now": WHEN + timedelta(seconds=1)})
            == 1
        )
        assert Prepared(COUNT).execute(connection, {"b_uid": "1.2.3.9", "b_now": WHEN}) == 0
    expected = stored(db, "1.2.3.1")
    assert stored(db, "1.2.3.2") == expected
    # the timestamp is stored as UTC in SQLAlchemy's format and read back as the same moment
    assert expected == (1, "2026-03-04 03:06:08.890123", WHEN + timedelta(seconds=1))
    with db.engine.connect() as connection:
        assert Prepared(STATE).first(connection, {"b_uid": "1.2.3.2"}) == ("open", 1)
        assert Prepared(STATE).first(connection, {"b_uid": "1.2.3.9"}) is None


def test_statements_run_inside_the_callers_transaction(db: Database) -> None:
    with pytest.raises(RuntimeError), db.engine.begin() as connection:
        Prepared(INSERT_SERIES).execute(connection, series_row("1.2.3.1"))
        assert Prepared(STATE).first(connection, {"b_uid": "1.2.3.1"}) == ("open", 0)
        raise RuntimeError("rolled back")
    with db.engine.connect() as connection:
        assert Prepared(STATE).first(connection, {"b_uid": "1.2.3.1"}) is None


def test_a_missing_parameter_is_named(db: Database) -> None:
    with db.engine.begin() as connection, pytest.raises(KeyError, match="b_now"):
        Prepared(COUNT).execute(connection, {"b_uid": "1.2.3.1"})


def test_database_errors_are_sqlalchemys_and_the_transaction_rolls_back(db: Database) -> None:
    prepared = Prepared(INSERT_SERIES)
    with pytest.raises(IntegrityError, match="UNIQUE constraint failed: series.series_instance_uid"):
        with db.engine.begin() as connection:
            prepared.execute(connection, series_row("1.2.3.1"))
            prepared.execute(connection, series_row("1.2.3.1"))
    with db.engine.connect() as connection:
        assert Prepared(STATE).first(connection, {"b_uid": "1.2.3.1"}) is None
    with db.engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE deliveries")
        connection.exec_driver_sql("DROP TABLE jobs")
        connection.exec_driver_sql("DROP TABLE events")
        connection.exec_driver_sql("DROP TABLE instances")
        connection.exec_driver_sql("DROP TABLE series")
    with db.engine.connect() as connection, pytest.raises(OperationalError, match="no such table: series"):
        Prepared(STATE).first(connection, {"b_uid": "1.2.3.1"})


def test_a_lost_connection_is_invalidated_as_by_connection_execute(db: Database) -> None:
    with db.engine.connect() as connection:
        connection.connection.dbapi_connection.close()  # type: ignore[union-attr]
        with pytest.raises(DBAPIError, match="closed database") as caught:
            Prepared(STATE).first(connection, {"b_uid": "1.2.3.1"})
        assert caught.value.connection_invalidated and connection.invalidated
    with db.engine.connect() as connection:  # the pool hands out a working connection again
        assert Prepared(STATE).first(connection, {"b_uid": "1.2.3.1"}) is None


def test_a_naive_timestamp_is_refused_as_by_connection_execute(db: Database) -> None:
    with db.engine.begin() as connection, pytest.raises(ValueError, match="naive datetime"):
        Prepared(COUNT).execute(connection, {"b_uid": "1.2.3.1", "b_now": WHEN.replace(tzinfo=None)})


def test_a_query_whose_columns_need_result_processing_is_refused(db: Database) -> None:
    when = Prepared(select(SERIES.c.last_received_at).where(SERIES.c.series_instance_uid == bindparam("u")))
    with db.engine.connect() as connection, pytest.raises(ValueError, match="needs result processing"):
        when.first(connection, {"u": "1.2.3.1"})


def test_callable_parameters_are_refused(db: Database) -> None:
    stamped = Prepared(insert(ASSOCIATIONS).values(started_at=bindparam("at", callable_=lambda: WHEN)))
    with db.engine.begin() as connection, pytest.raises(ValueError, match="callable or expanding"):
        stamped.execute(connection, {})


def test_compiled_for_the_postgresql_driver_with_named_parameters() -> None:
    dialect = postgresql.psycopg.dialect()  # type: ignore[attr-defined]
    compiled = Prepared(COUNT).compiled(dialect)
    assert compiled.order is None
    assert compiled.sql == (
        "UPDATE series SET instance_count=(series.instance_count + %(instance_count_1)s::INTEGER), "
        "last_received_at=%(b_now)s::TIMESTAMP WITH TIME ZONE "
        "WHERE series.series_instance_uid = %(b_uid)s::VARCHAR"
    )
    assert compiled.required == {"b_uid", "b_now"}
    assert compiled.defaults == {"instance_count_1": 1}
    # PostgreSQL keeps the time zone (the column's type decorator passes the aware UTC time on)
    process = compiled.processors["b_now"]
    assert process(WHEN) == WHEN.astimezone(UTC) and process(WHEN).tzinfo is not None
    assert compiled.names == ("instance_count_1", "b_now", "b_uid")
    assert Prepared(STATE).compiled(dialect).sql.endswith("= %(b_uid)s::VARCHAR")
