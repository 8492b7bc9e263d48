"""Two Sanic apps sharing one ``db``, served by one process with ``Sanic.serve_single``.

Run as ``python -m tests.apps.two_apps PORT1 PORT2`` with ``DATABASE_URL`` set; each app
answers ``GET /`` with its name after a read through ``db.read``.
"""

from __future__ import annotations

import os
import sys

from sanic import Request, Sanic
from sanic.response import HTTPResponse, text
from sqlalchemy import text as sql

from sanic_sqlalchemy import Database

db = Database(os.environ["DATABASE_URL"])


def two_apps(ports: list[int]) -> list[Sanic]:  # type: ignore[type-arg]
    apps = []
    for number, port in enumerate(ports):
        app = Sanic(f"two_apps_{number}")

        @app.get("/")
        async def name(request: Request) -> HTTPResponse:
            await db.read.execute(sql("SELECT 1"))
            return text(request.app.name)

        db.init_app(app)
        app.prepare(host="127.0.0.1", port=port, single_process=True, access_log=False)
        apps.append(app)
    return apps


if __name__ == "__main__":
    Sanic.serve_single(two_apps([int(port) for port in sys.argv[1:3]])[0])
