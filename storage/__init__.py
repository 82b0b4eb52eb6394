"""SQLAlchemy 2 async implementation of the core's ports, on SQLite (default) and PostgreSQL."""

from storage.engine import open_store

__all__ = ["open_store"]
