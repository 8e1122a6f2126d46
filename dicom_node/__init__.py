"""SegNode's network edge, spool, jobs, routing, audit database, outputs and CLI."""

__version__ = "0.1.0"
