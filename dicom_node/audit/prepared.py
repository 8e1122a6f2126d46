"""Core statements of the receiving hot path, compiled once per dialect and run on the DBAPI cursor.

SQLAlchemy's ``Connection.execute`` costs about 40 µs of CPU per statement around the database's own few
microseconds (execution context, parameter construction, result wrapping); a C-STORE runs seven statements.
A :class:`Prepared` statement is compiled once for each dialect it meets; its parameters are processed by
the column types' own bind processors (what ``Connection.execute`` applies: the audit tables' UTC
timestamps, SQLite's datetime format), and it runs on the DBAPI cursor of the caller's SQLAlchemy
connection, inside that connection's transaction. A DBAPI error comes out as SQLAlchemy's exception for it
(``IntegrityError`` and so on), and a connection the dialect says is lost is invalidated, as
``Connection.execute`` does.

Only for statements whose result columns need no result processing (strings and integers): their rows are
the DBAPI's tuples. :class:`Prepared` refuses a statement it cannot run the way SQLAlchemy would.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

Processor = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    #: rendered parameter names, in their order for a positional paramstyle; ``None`` for a named one
    order: tuple[str, ...] | None
    #: the parameters the caller gives (``bindparam`` without a value)
    required: frozenset[str]
    #: the values of the statement's own literals (``count + 1``), by rendered name
    defaults: Mapping[str, Any]
    processors: Mapping[str, Processor]
    #: the named-paramstyle statements bind every rendered name the statement has
    names: tuple[str, ...]


class Prepared:
    """One Core statement, run on the DBAPI cursor of a SQLAlchemy :class:`Connection`."""

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._by_dialect: weakref.WeakKeyDictionary[Dialect, _Compiled] = weakref.WeakKeyDictionary()

    def compiled(self, dialect: Dialect) -> _Compiled:
        found = self._by_dialect.get(dialect)
        if found is None:
            found = self._by_dialect[dialect] = _compile(self.statement, dialect)
        return found

    def first(self, connection: Connection, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row of a query (a DBAPI tuple), or ``None``."""
        row, _ = self._run(connection, params, fetch=True)
        return row

    def execute(self, connection: Connection, params: Mapping[str, Any]) -> int:
        """Run an INSERT, UPDATE or DELETE; returns the DBAPI's row count."""
        return self._run(connection, params, fetch=False)[1]

    def _run(
        self, connection: Connection, params: Mapping[str, Any], fetch: bool
    ) -> tuple[tuple[Any, ...] | None, int]:
        dialect = connection.dialect
        compiled = self.compiled(dialect)
        arguments = _arguments(compiled, params)
        dbapi_connection = connection.connection
        cursor = None
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute(compiled.sql, arguments)
            row = cursor.fetchone() if fetch else None
            count: int = cursor.rowcount
            cursor.close()
        except dialect.loaded_dbapi.Error as exc:
            lost = bool(dialect.is_disconnect(exc, dbapi_connection.dbapi_connection, cursor))
            if cursor is not None:
                with contextlib.suppress(dialect.loaded_dbapi.Error):  # the statement's error is the one
                    cursor.close()
            wrapped = DBAPIError.instance(
                compiled.sql,
                arguments,
                exc,
                dialect.loaded_dbapi.Error,
                connection_invalidated=lost,
                dialect=dialect,
            )
            if lost:
                connection.invalidate(wrapped)
            raise wrapped from exc
        return row, count


def _arguments(compiled: _Compiled, params: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
    missing = compiled.required.difference(params)
    if missing:
        raise KeyError(f"parameters {sorted(missing)} not given for {compiled.sql!r}")
    values = {**compiled.defaults, **params}
    for name, process in compiled.processors.items():
        values[name] = process(values[name])
    if compiled.order is not None:
        return tuple(values[name] for name in compiled.order)
    return {name: values[name] for name in compiled.names}


def _compile(statement: ClauseElement, dialect: Dialect) -> _Compiled:
    compiled = statement.compile(dialect=dialect)
    if not isinstance(compiled, SQLCompiler):  # pragma: no cover - DDL is not run this way
        raise TypeError(f"not a SQL statement: {statement}")
    if compiled.escaped_bind_names:
        raise ValueError(f"parameter names that the dialect escapes: {dict(compiled.escaped_bind_names)}")
    required: set[str] = set()
    defaults: dict[str, Any] = {}
    processors: dict[str, Processor] = {}
    for bind, name in compiled.bind_names.items():
        if bind.callable is not None or bind.expanding:
            raise ValueError(f"parameter {name!r}: callable or expanding parameters are not supported")
        if bind.required:
            required.add(name)
        else:
            defaults[name] = bind.value
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            processors[name] = process
    for column in getattr(statement, "selected_columns", ()):
        if column.type.dialect_impl(dialect).result_processor(dialect, None) is not None:
            raise ValueError(f"column {column} needs result processing; run it with Connection.execute")
    names = tuple(compiled.bind_names.values())
    order = tuple(compiled.positiontup or ()) if compiled.positional else None
    return _Compiled(compiled.string, order, frozenset(required), defaults, processors, names)
