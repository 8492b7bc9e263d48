"""Streaming responses: the unit settles before the headers, reads go on until the stream
ends, and the errors while it streams say what to do, truthfully."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sanic import Request
from sanic.response import ResponseStream
from sqlalchemy import select

from sanic_sqlalchemy import Database
from sanic_sqlalchemy.errors import SanicSQLAlchemyError
from sanic_sqlalchemy.testing import CommitRecorder, wait_until_idle

from .conftest import count_users, make_app
from .models import User


@pytest.mark.parametrize("status", [200, 409])
async def test_response_stream_csv_export(db: Database, serve: Any, status: int) -> None:
    """A handler that writes and returns a ``ResponseStream`` commits (or, for a 4xx, rolls
    back) before the headers are sent; its streaming function reads through ``db.read``
    until it ends, and ``db.write`` there raises an error that says why."""
    app = make_app("csv_export")
    recorder = CommitRecorder()
    seen: dict[str, Any] = {}

    @app.post("/export")
    async def export(_request: Request) -> ResponseStream:
        db.write.add(User(id=1, name="Ada", email="ada@example.com"))
        db.write.add(User(id=2, name="Bob", email="bob@example.com"))
        db.on_commit(recorder, "exported")

        async def write_csv(response: ResponseStream) -> None:
            # Settled before the headers: another unit already sees the outcome.
            seen["other_unit"] = await asyncio.create_task(count_users(db))
            seen["callbacks"] = list(recorder.args)
            await response.write("id,name\n")
            for user in (await db.read.execute(select(User).order_by(User.id))).scalars():
                await response.write(f"{user.id},{user.name}\n")
            try:
                _ = db.write
            except SanicSQLAlchemyError as error:
                seen["write_error"] = str(error)

        return ResponseStream(write_csv, status=status, content_type="text/csv")

    db.init_app(app)
    served = await serve(app)
    response = await served.client.post("/export")
    assert response.status_code == status
    if status == 200:
        assert response.text == "id,name\n1,Ada\n2,Bob\n"
        assert seen["other_unit"] == 2
        assert seen["callbacks"] == [("exported",)]
        assert "already committed" in seen["write_error"]
    else:
        assert response.text == "id,name\n"  # this unit rolled back: nothing to read
        assert seen["other_unit"] == 0
        assert seen["callbacks"] == []
        assert "already rolled back" in seen["write_error"]
    assert "async with db:" in seen["write_error"]
    assert (await wait_until_idle(db)).total == 0


async def test_async_with_db_while_streaming_opens_a_fresh_unit(db: Database, serve: Any) -> None:
    """While a handler streams, the error for ``db.write`` points to ``async with db:``, and
    that block really opens a new unit whose write commits when the block exits."""
    app = make_app("stream_fresh_unit")
    seen: dict[str, Any] = {}

    @app.post("/stream")
    async def stream(request: Request) -> None:
        db.write.add(User(id=1, name="Ada", email="ada@example.com"))
        response = await request.respond(content_type="text/plain")
        try:
            db.write.add(User(id=2, name="Bob", email="bob@example.com"))
        except SanicSQLAlchemyError as error:
            seen["write_error"] = str(error)
        async with db:
            db.write.add(User(id=3, name="Cy", email="cy@example.com"))
        seen["after_block"] = await asyncio.create_task(count_users(db))
        rows = (await db.read.execute(select(User))).scalars().all()
        await response.send(f"{len(rows)} rows")
        await response.eof()

    db.init_app(app)
    served = await serve(app)
    response = await served.client.post("/stream")
    assert response.status_code == 200
    assert "async with db:" in seen["write_error"]
    assert seen["after_block"] == 2  # users 1 and 3, each unit committed by itself
    assert await count_users(db) == 2
    assert (await wait_until_idle(db)).total == 0
