"""Values computed at flush and responses built before the commit (issue 17, item 22).

A request's unit commits after its response is built: a primary key, a server or
column default or a ``version_id_col`` counter computed by the commit's flush is not in
the response unless the handler flushed first.  In debug mode the library says so.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sanic import Request
from sanic.response import HTTPResponse, json

from sanic_sqlalchemy import Database

from .conftest import make_app
from .models import User

_WARNING = "the commit after the response was built changed"


def _app(db: Database) -> Any:
    app = make_app("flush_values")

    @app.post("/users")
    async def create(request: Request) -> HTTPResponse:
        user = User(name="Ada", email=request.json["email"])
        db.write.add(user)
        if request.args.get("flush"):
            await db.write.flush()
        return json({"id": user.id}, status=201)

    db.init_app(app)
    return app


async def test_debug_mode_warns_when_the_commit_computes_what_the_response_lacks(
    db: Database, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """In debug mode, a response built before the commit's flush gave the new row its
    id warns, naming the attribute and the fix; a handler that flushed first does not."""
    served = await serve(_app(db), debug=True)
    with caplog.at_level(logging.WARNING, logger="sanic_sqlalchemy"):
        response = await served.client.post("/users", json={"email": "ada@example.com"})
    assert (response.status_code, response.json()) == (201, {"id": None})
    [record] = [r for r in caplog.records if _WARNING in r.getMessage()]
    message = record.getMessage()
    assert message.startswith(f"POST /users: {_WARNING} User.id ("), message
    assert "await db.write.flush()" in message

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sanic_sqlalchemy"):
        response = await served.client.post(
            "/users", params={"flush": "1"}, json={"email": "bob@example.com"}
        )
    assert response.status_code == 201 and response.json()["id"] is not None
    assert [r for r in caplog.records if _WARNING in r.getMessage()] == []


async def test_without_debug_mode_nothing_is_checked(
    db: Database, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Outside debug mode the commit is not watched: no warning, nothing installed for it."""
    served = await serve(_app(db))
    with caplog.at_level(logging.WARNING, logger="sanic_sqlalchemy"):
        response = await served.client.post("/users", json={"email": "ada@example.com"})
    assert response.status_code == 201
    assert [r for r in caplog.records if _WARNING in r.getMessage()] == []
