"""The plugin's asynchronous fixtures, registered when pytest-asyncio is installed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from ..database import DatabaseCore as Database
from .isolation import emptied, rolled_back


@pytest_asyncio.fixture
async def rolled_back_db(sanic_sqlalchemy_database: Database) -> AsyncIterator[Database]:
    """The database, every unit of the test joined into one transaction rolled back after."""
    db = sanic_sqlalchemy_database
    async with rolled_back(db):
        yield db
    await db.dispose()


@pytest_asyncio.fixture
async def transactional_db(
    sanic_sqlalchemy_database: Database, sanic_sqlalchemy_metadata: Any
) -> AsyncIterator[Database]:
    """The database with real commits; every table of the metadata is emptied after."""
    db = sanic_sqlalchemy_database
    async with emptied(db, sanic_sqlalchemy_metadata):
        yield db
    await db.dispose()
