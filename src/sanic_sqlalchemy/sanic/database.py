"""``Database``: the core (``database.DatabaseCore``) with ``init_app`` for Sanic."""

from __future__ import annotations

from typing import Any

from sanic import Sanic

from ..database import DatabaseCore
from .install import install


class Database(DatabaseCore):
    """The database of a Sanic application: ``db.read``, ``db.write`` and
    ``db.on_commit``, with every request a unit of work once ``init_app`` ran."""

    def init_app(
        self,
        app: Sanic[Any, Any],
        url: Any = None,
        *,
        read_urls: Any = None,
        commit_on_exit: bool | None = None,
        config_prefix: str | None = None,
        **options: Any,
    ) -> None:
        """Give every request of ``app`` a unit of work and manage the engines.

        Settings not passed here come from the ``Database(...)`` call, then from
        ``app.config`` (``DATABASE_URL`` and friends, and so ``SANIC_DATABASE_URL``
        in the environment; ``config_prefix`` replaces ``DATABASE_``, here or in
        ``Database(...)``).  A missing or bad setting raises ``ConfigurationError``
        now, naming its key.  Engines are created in each worker when the server
        starts and disposed when it stops.
        """
        self.configure_from(
            app.config,
            config_prefix=config_prefix,
            url=url,
            read_urls=read_urls,
            commit_on_exit=commit_on_exit,
            **options,
        )
        install(self, app)
