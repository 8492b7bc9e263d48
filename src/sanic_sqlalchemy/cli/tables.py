"""``create-all`` and ``drop-all``: ``db.create_all`` / ``db.drop_all`` for a
``MetaData`` named as ``module:attribute``, on one database."""

from __future__ import annotations

from sqlalchemy import MetaData

from ..database import DatabaseCore as Database
from .targets import CommandError, load


def metadata_of(target: str) -> MetaData:
    """The ``MetaData`` named by ``target`` (``module:attribute``)."""
    value = load(target)
    if not isinstance(value, MetaData):
        raise CommandError(
            f"{target!r} is a {type(value).__name__}, not a MetaData; pass e.g. "
            "'myapp.models:Base.metadata'."
        )
    return value


async def run_tables(command: str, metadata: MetaData, db: Database) -> None:
    """Create or drop the tables of ``metadata`` on ``db``, then release its engines."""
    try:
        if command == "create-all":
            await db.create_all(metadata)
        else:
            await db.drop_all(metadata)
    finally:
        await db.dispose()
