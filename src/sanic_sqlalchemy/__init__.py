"""Asynchronous SQLAlchemy 2 for Sanic: a unit of work per request, done right.

from sanic_sqlalchemy import Database

db = Database()
db.init_app(app)            # DATABASE_URL from app.config
"""

from .errors import (
    ConfigurationError,
    EngineNotInitialisedError,
    NoActiveUnitError,
    ReadOnlyError,
    SanicSQLAlchemyError,
)
from .sanic import Database
from .tasks import current_task
from .unit.sessions import ReadSession, WriteSession

__all__ = [
    "ConfigurationError",
    "Database",
    "EngineNotInitialisedError",
    "NoActiveUnitError",
    "ReadOnlyError",
    "ReadSession",
    "SanicSQLAlchemyError",
    "WriteSession",
    "current_task",
]
