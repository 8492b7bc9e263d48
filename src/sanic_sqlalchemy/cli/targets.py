"""What a command works on: the ``APP_OR_DB`` argument (``module:app``, ``module:db`` or
a URL) and the objects it names, loaded by importing their module from the current
directory, so that an app's ``@db.task`` functions are registered as they would be in
the server."""

from __future__ import annotations

import os
import sys
from typing import Any

from sqlalchemy.engine import URL

from .._lookup import AttributeNotFound, ImportFailed, MalformedName, find
from ..database import DatabaseCore as Database
from ..errors import SanicSQLAlchemyError
from ..settings import public_url


class CommandError(SanicSQLAlchemyError):
    """A target that cannot be loaded or used; the message says what to pass instead."""


def render(url: URL) -> str:
    """``url`` as text, its password and secret query parameters (``?password=``)
    masked."""
    return public_url(url)


def load(target: str) -> Any:
    """The object named by ``module:attribute`` (the current directory is importable)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return find(target)
    except MalformedName:
        raise CommandError(
            f"{target!r}: expected MODULE:NAME, e.g. 'myapp.server:app' or 'myapp.db:db'."
        ) from None
    except ImportFailed as failure:
        if failure.absent:
            raise CommandError(
                f"{target!r}: no module named {failure.module!r} (run the command from the "
                "directory that contains it, or install the project)."
            ) from failure.error
        error = failure.error
    except AttributeNotFound as failure:
        raise CommandError(
            f"{target!r}: {failure.module!r} has no {failure.attribute!r}."
        ) from None
    # A module that fails as it runs: its own error and traceback, as Python shows them
    # (raised here, out of the handler, so that nothing is chained to it).
    raise error


def databases(target: str) -> list[Database]:
    """The databases of ``target``: a URL, ``module:db`` or ``module:app``."""
    if "://" in target:
        return [Database(target)]
    value = load(target)
    if isinstance(value, Database):
        return [value]
    found = getattr(getattr(value, "request_class", None), "_sanic_sqlalchemy_databases", None)
    if isinstance(found, list) and found:
        return list(found)
    raise CommandError(
        f"{target!r} is neither a Database nor a Sanic app on which db.init_app(app) was "
        "called; pass MODULE:db, MODULE:app or a database URL."
    )


def describe(error: BaseException) -> str:
    # The driver's own message (DBAPIError wraps it with the statement); never a URL.
    original = getattr(error, "orig", None) or error
    return f"{type(original).__name__}: {original}".strip()


def one_database(target: str | None) -> Database:
    """The one database of ``target`` (by default ``SANIC_DATABASE_URL``); an app with
    several is an error that says to name one."""
    if target is None:
        target = os.environ.get("SANIC_DATABASE_URL")
        if not target:
            raise CommandError(
                "Which database? Pass --db MODULE:db (or MODULE:app, or a URL), or set "
                "SANIC_DATABASE_URL."
            )
    found = databases(target)
    if len(found) != 1:
        prefixes = ", ".join(db.config_prefix for db in found)
        raise CommandError(
            f"{target!r} has {len(found)} databases ({prefixes}); pass --db MODULE:db."
        )
    return found[0]
