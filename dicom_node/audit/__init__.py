"""Audit: the database (engine, ORM tables, Alembic migrations) and the append-only audit log."""
