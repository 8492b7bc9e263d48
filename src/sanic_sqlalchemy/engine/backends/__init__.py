"""What differs between PostgreSQL, MySQL/MariaDB and SQLite, in one place.

Each backend says how its connections are made read-only, how a read runs inside the
unit's writing transaction without being able to write (rule 12), how a refused write
is recognised, and how a dead connection is noticed without a round trip.

How read-only is enforced:

* PostgreSQL: read connections open with ``default_transaction_read_only=on`` in the
  start-up packet and run in autocommit, so a read costs one round trip and the server
  refuses any write.  Inside a writing transaction a read runs in a savepoint made
  ``READ ONLY`` and rolled back afterwards.
* MySQL/MariaDB: read connections run ``SET SESSION TRANSACTION READ ONLY`` once when
  opened (a session-wide setting also refuses DDL, which ``START TRANSACTION READ
  ONLY`` does not), and ask the server to flag every change of session state in its
  replies, so that a connection whose read-only mode was switched off is seen without a
  round trip.  Inside a writing transaction nothing can be made read-only: there the
  read guard (``readonly``), which lets only plain queries through, is the only defence.
  Every connection is opened without the driver's multi-statement capability, so the
  server itself refuses chained statements.
* PostgreSQL behind a transaction pooler (``pooling``): no start-up setting survives
  there, so every read runs in a ``BEGIN READ ONLY`` transaction rolled back after it.
* SQLite: read connections set ``PRAGMA query_only`` once when opened.  Inside a
  writing transaction a read runs in a savepoint with ``query_only`` switched on.

On every backend the read guard refuses, before sending it, any statement that is not a
plain query; the database's read-only mode is the second line of defence.
"""

from __future__ import annotations

from ...settings import Settings
from .base import Backend, Role, refused_as_read_only
from .mysql import MySQL
from .pooling import PooledPostgreSQL, install_check_before_rollback
from .postgresql import PostgreSQL
from .sqlite import SQLite

__all__ = [
    "Backend",
    "MySQL",
    "PooledPostgreSQL",
    "PostgreSQL",
    "Role",
    "SQLite",
    "backend_for",
    "install_check_before_rollback",
    "refused_as_read_only",
]


def backend_for(settings: Settings) -> Backend:
    """The backend object for the database that ``settings`` points at."""
    backend = settings.backend
    if backend == "postgresql":
        return PooledPostgreSQL() if settings.transaction_pooling else PostgreSQL()
    if backend == "mysql":
        return MySQL(multi_statements=settings.multi_statements)
    return SQLite()
