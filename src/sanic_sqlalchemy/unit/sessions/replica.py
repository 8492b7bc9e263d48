"""``db.read``'s synchronous half for a database with replicas: each unit reads from the
server its read route chose, and moves on when that server fails.

Chosen at start-up (a database without replicas never runs this code)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ...replicas.routing import UNREACHABLE, ReadRoute
from .read import ReadSyncSession


class ReplicaReadSyncSession(ReadSyncSession):
    """Reads through the unit's read route (``replicas.routing``)."""

    def _read_on_a_live_connection(
        self, statement: Any, params: Any, kwargs: dict[str, Any]
    ) -> Any:
        route = self._unit.read_route()
        if route is None:
            return super()._read_on_a_live_connection(statement, params, kwargs)
        return self._read_on_a_replica(route, statement, params, kwargs)

    def _read_on_a_replica(
        self, route: ReadRoute, statement: Any, params: Any, kwargs: dict[str, Any]
    ) -> Any:
        # The connection is taken first, on its own: a server that cannot be reached
        # has run nothing, so the unit moves to another one (or the primary) and no
        # request fails because one replica is down.
        retried = False
        while True:
            try:
                self.connection()
            except UNREACHABLE as error:
                self._end_transaction()
                if route.server_failed(error):
                    continue
                raise
            try:
                result = Session.execute(self, statement, params, **kwargs)
            except DBAPIError as error:
                if not error.connection_invalidated or retried:
                    raise
                # The server died mid-read: in autocommit on a read-only connection the
                # read changed nothing, so it runs again (elsewhere if it was a replica).
                retried = True
                self._end_transaction()
                route.server_failed(error)
                continue
            route.read_done()
            return result

    def get_bind(self, mapper: Any = None, *, bind: Any = None, **kwargs: Any) -> Any:
        if bind is None and not self._unit.wrote:
            route = self._unit.read_route()
            if route is not None:
                return route.bind()
        return super().get_bind(mapper, bind=bind, **kwargs)
