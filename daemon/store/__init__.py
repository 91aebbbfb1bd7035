"""The SQLite store: one writer connection, WAL, versioned migrations.

Feature modules (``daemon.store.runs``, ``daemon.store.outbox``, ...) keep their SQL beside their
concept and use ``Database`` for access: ``read()`` for queries, ``transaction()`` for writes.
"""

from daemon.store.database import Database, open_database

__all__ = ["Database", "open_database"]
