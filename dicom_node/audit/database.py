"""The one database engine of a process: creation, SQLite pragmas, migrations, write serialisation."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

LOG = logging.getLogger(__name__)

#: PostgreSQL advisory lock held while migrating (any fixed number; 'SEGN' in ASCII).
MIGRATION_LOCK_KEY = 0x5345474E


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before the C-STORE response says Success (durable acknowledgement).
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def alembic_config(url: str | None = None) -> AlembicConfig:
    """Alembic configuration pointing at the packaged migration scripts."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resources.files("dicom_node.audit").joinpath("migrations")))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


class Database:
    """The engine, a session factory and the in-process write lock (SQLite has one writer at a time)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = threading.Lock()

    def upgrade(self, revision: str = "head") -> None:
        """Run the Alembic migrations up to ``revision`` (the service runs ``head`` at start)."""
        cfg = alembic_config(self.url)
        with self.engine.begin() as connection:
            if self.engine.dialect.name == "postgresql":
                # receivers of a cluster may start together: one migrates, the others wait and find it done
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)
        LOG.info("audit database at revision %s", revision)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session whose transaction is committed on exit (rolled back on error), one writer at a time."""
        with self._write_lock, self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """:meth:`write` for Core statements: a connection whose transaction is committed on exit (rolled
        back on error), one writer at a time, without an ORM session."""
        with self._write_lock, self.engine.begin() as connection:
            yield connection

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    @contextmanager
    def exclusive(self, key: int) -> Iterator[bool]:
        """Whether this process may run a cluster-wide chore now (PostgreSQL: an advisory lock taken without
        waiting and held until the end of the block; another process's ``exclusive(key)`` meanwhile gets
        False). On SQLite, one process: always True."""
        if self.engine.dialect.name != "postgresql":
            yield True
            return
        with self.engine.connect() as connection:
            mine = bool(connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar())
            try:
                yield mine
            finally:
                if mine:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()

    def revision(self) -> str | None:
        """The Alembic revision the database is at (None: not migrated yet)."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            current: str | None = MigrationContext.configure(connection).get_current_revision()
            return current

    def head_revision(self) -> str:
        """The newest revision of the packaged migrations (what this version of SegNode needs)."""
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert head is not None
        return head

    def dispose(self) -> None:
        self.engine.dispose()
