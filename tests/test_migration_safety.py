"""Porting an application (issue 9): no silent loss of writes, answerable constraint errors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sanic import Request
from sanic.response import HTTPResponse, json, text
from sqlalchemy import ForeignKey, Integer, String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload

from sanic_sqlalchemy import Database, ReadOnlyError
from sanic_sqlalchemy.errors import UnitStateError
from sanic_sqlalchemy.testing import CommitRecorder, StatementLog, checked_out

from .conftest import count_users, make_app
from .models import Order, User


def ada(user_id: int = 1, email: str | None = None) -> User:
    return User(id=user_id, name="Ada", email=email or f"ada{user_id}@example.com")


async def seed(db: Database, *users: User) -> None:
    async with db:
        db.write.add_all(users or [ada()])


async def stored_names(db: Database) -> list[str]:
    async with db:
        return list(await db.read.scalars(select(User.name).order_by(User.id)))


async def stored_orders(db: Database) -> list[str]:
    async with db:
        return list(await db.read.scalars(select(Order.item).order_by(Order.id)))


# -- 1. changes made through db.read ------------------------------------------------


async def test_a_change_through_read_fails_the_request(db: Database, serve: Any) -> None:
    """A request that changes an object ``db.read`` loaded answers 500 with a
    ``ReadOnlyError`` naming it, and its other writes roll back."""
    await seed(db)
    app = make_app("read_change")
    errors: list[str] = []

    @app.exception(ReadOnlyError)
    async def refused(_request: Request, error: Exception) -> HTTPResponse:
        errors.append(str(error))
        return text("refused", status=500)

    @app.post("/")
    async def rename(_request: Request) -> HTTPResponse:
        user = await db.read.get(User, 1)
        assert user is not None
        user.name = "changed through db.read"
        db.write.add(Order(id=1, user_id=1, item="book"))
        return json({"ok": True})

    db.init_app(app)
    served = await serve(app)
    response = await served.client.post("/")
    assert response.status_code == 500
    assert errors == [
        "db.read holds changes it can never write (changed User(1)), so the unit failed "
        "and its writes were rolled back; nothing was committed. Change objects through "
        "db.write: `db.write.add(obj)` moves an object that db.read loaded into db.write, "
        "or load it there, e.g. `await db.write.get(Model, id)`."
    ]
    assert await stored_names(db) == ["Ada"]
    assert await stored_orders(db) == []
    assert checked_out(db).total == 0


async def test_new_and_deleted_objects_in_read_fail_the_unit(db: Database) -> None:
    """A unit whose ``db.read`` holds added or deleted objects raises ``ReadOnlyError``
    naming them all, and commits nothing."""
    await seed(db)
    with pytest.raises(ReadOnlyError) as caught:
        async with db:
            user = await db.read.get(User, 1)
            await db.read.delete(user)
            db.read.add(ada(2))
            db.write.add(ada(3))
    assert str(caught.value).startswith(
        "db.read holds changes it can never write (new User (not yet stored); "
        "deleted User(1)), so the unit failed"
    )
    assert await stored_names(db) == ["Ada"]


async def test_a_change_through_read_is_refused_at_the_next_read(db: Database) -> None:
    """The next ``db.read`` query after a change through it raises, before the query
    could overwrite the change; nothing is sent."""
    await seed(db)
    log = StatementLog(db)
    try:
        async with db:
            user = await db.read.get(User, 1)
            assert user is not None
            user.email = "new@example.com"
            sent = len(log.statements)
            with pytest.raises(ReadOnlyError, match=r"\(changed User\(1\)\), refused before"):
                await db.read.execute(select(User))
            assert len(log.statements) == sent
            db.write.add(user)  # the fix the message names: move it to db.write
            assert (await db.read.scalar(select(User.email))) == "new@example.com"
    finally:
        log.detach()
    async with db:
        assert (await db.read.scalar(select(User.email))) == "new@example.com"


# -- 2. async with db.write / close() ------------------------------------------------


async def test_async_with_write_leaves_the_session_to_the_unit(db: Database, serve: Any) -> None:
    """``async with db.write as session:`` in a handler gives ``db.write`` itself and its
    writes commit with the request, like those of the ported ``request.ctx.session``."""
    app = make_app("async_with_write")

    @app.post("/")
    async def create(_request: Request) -> HTTPResponse:
        async with db.write as session:
            assert session is db.write
            session.add(ada())
        async with db.read as reader:
            assert reader is db.read
            names = list(await reader.scalars(select(User.name)))
        db.write.add(ada(2))
        return json({"seen": names}, status=201)

    db.init_app(app)
    served = await serve(app)
    response = await served.client.post("/")
    assert response.status_code == 201
    assert response.json() == {"seen": ["Ada"]}
    assert await count_users(db) == 2


@pytest.mark.parametrize("name", ["read", "write"])
async def test_closing_a_session_inside_a_unit_is_refused(db: Database, name: str) -> None:
    """``close()`` on ``db.read`` or ``db.write`` inside a live unit raises
    ``UnitStateError``, and the unit still commits its writes."""
    async with db:
        db.write.add(ada())
        with pytest.raises(UnitStateError) as caught:
            await getattr(db, name).close()
        assert str(caught.value).startswith(
            f"db.{name}.close() was called inside a live unit of work: the unit closes "
            "its sessions itself when it ends"
        )
        with pytest.raises(UnitStateError, match="closes its sessions itself"):
            await getattr(db, name).aclose()
    assert await count_users(db) == 1


# -- 4. constraint violations at the commit ------------------------------------------


async def test_a_failing_commit_reaches_the_apps_exception_handler(
    db: Database, serve: Any
) -> None:
    """A unique violation at the request's commit goes to the app's ``IntegrityError``
    handler: its 409 reaches the client, and an answer below 400 becomes a 500."""
    await seed(db, ada(1, "taken@example.com"))
    app = make_app("integrity")
    recorder = CommitRecorder()
    handled: list[str] = []

    @app.exception(IntegrityError)
    async def conflict(request: Request, error: Exception) -> HTTPResponse:
        handled.append(type(error).__name__)
        status = int(request.args.get("answer", 409))
        return json({"error": "that e-mail address is taken"}, status=status)

    @app.post("/users")
    async def register(_request: Request) -> HTTPResponse:
        db.write.add(ada(2, "taken@example.com"))  # no flush: the commit finds out
        db.on_commit(recorder, "welcome")
        return json({"id": 2}, status=201)

    db.init_app(app)
    served = await serve(app)
    response = await served.client.post("/users")
    assert response.status_code == 409
    assert response.json() == {"error": "that e-mail address is taken"}
    response = await served.client.post("/users?answer=200")
    assert response.status_code == 500
    assert handled == ["IntegrityError", "IntegrityError"]
    assert recorder.calls == []
    assert await count_users(db) == 1
    assert checked_out(db).total == 0


async def test_savepoint_flush_catches_a_violation_where_it_happens(
    db: Database, serve: Any
) -> None:
    """The README's other way: a flush inside ``begin_nested()`` raises the violation in
    the handler, which answers 409 while the unit's other writes commit."""
    await seed(db, ada(1, "taken@example.com"))
    app = make_app("savepoint_flush")

    @app.post("/users")
    async def register(_request: Request) -> HTTPResponse:
        db.write.add(Order(id=1, user_id=1, item="signup attempt"))
        try:
            async with db.write.begin_nested():
                db.write.add(ada(2, "taken@example.com"))
        except IntegrityError:
            return json({"error": "that e-mail address is taken"}, status=409)
        return json({"id": 2}, status=201)

    @app.post("/attempts")
    async def attempts(_request: Request) -> HTTPResponse:
        db.write.add(Order(id=2, user_id=1, item="kept"))
        try:
            async with db.write.begin_nested():
                db.write.add(ada(3, "taken@example.com"))
        except IntegrityError:
            pass  # handled: the unit goes on and commits the rest
        return json({"ok": True})

    db.init_app(app)
    served = await serve(app)
    assert (await served.client.post("/users")).status_code == 409
    assert (await served.client.post("/attempts")).status_code == 200
    assert await stored_orders(db) == ["kept"]
    assert await count_users(db) == 1


# -- 5. objects db.read loaded, given to db.write ------------------------------------


async def test_write_add_delete_merge_take_objects_read_loaded(db: Database) -> None:
    """``db.write.add`` and ``.delete`` move an object ``db.read`` loaded into
    ``db.write`` (with its changes); ``.merge`` copies it; all three commit."""
    await seed(db, ada(1), ada(2), ada(3))
    async with db:
        first = await db.read.get(User, 1)
        second = await db.read.get(User, 2)
        third = await db.read.get(User, 3)
        assert first is not None and second is not None and third is not None
        first.name = "changed, then added"
        db.write.add(first)
        assert first in db.write and first not in db.read
        await db.write.delete(second)
        third.name = "merged"
        db.read.expunge(third)
        merged = await db.write.merge(third)
        assert merged in db.write
        first.email = "changed after add@example.com"
    async with db:
        rows = (await db.read.execute(select(User.id, User.name, User.email))).all()
    assert [tuple(row) for row in rows] == [
        (1, "changed, then added", "changed after add@example.com"),
        (3, "merged", "ada3@example.com"),
    ]


async def test_merge_takes_an_object_still_in_read(db: Database) -> None:
    """``db.write.merge`` of an object that is still in ``db.read`` returns the write
    session's copy and leaves the read one alone."""
    await seed(db)
    async with db:
        user = await db.read.get(User, 1)
        assert user is not None
        merged = await db.write.merge(user)
        merged.name = "Ada L."
        assert merged is not user and user in db.read
    assert await stored_names(db) == ["Ada L."]


class ShelfBase(DeclarativeBase):
    pass


class Author(ShelfBase):
    __tablename__ = "migration_authors"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    books: Mapped[list[Book]] = relationship(back_populates="author")


class Book(ShelfBase):
    __tablename__ = "migration_books"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("migration_authors.id"))
    title: Mapped[str] = mapped_column(String(100))
    author: Mapped[Author] = relationship(back_populates="books")


async def test_write_add_moves_what_its_cascade_reaches(db: Database) -> None:
    """``db.write.add`` of an object ``db.read`` loaded moves the related objects its
    cascade reaches too, with their changes."""
    await db.create_all(ShelfBase.metadata)
    try:
        async with db:
            db.write.add(Author(id=1, name="Le Guin", books=[Book(id=1, title="Earthsea")]))
        async with db:
            query = select(Author).options(selectinload(Author.books))
            author = (await db.read.execute(query)).scalar_one()
            author.books[0].title = "A Wizard of Earthsea"
            author.books.append(Book(id=2, title="The Dispossessed"))
            db.write.add(author)
            assert author.books[0] in db.write and author.books[0] not in db.read
        async with db:
            titles = await db.read.scalars(select(Book.title).order_by(Book.id))
            assert list(titles) == ["A Wizard of Earthsea", "The Dispossessed"]
    finally:
        await db.drop_all(ShelfBase.metadata)


# -- 6. db.read sees db.write's pending changes -------------------------------------


async def test_concurrent_reads_flush_pending_writes_once(db: Database) -> None:
    """Reads gathered in one unit while ``db.write`` holds pending changes all see them;
    one of them flushes, none raises."""
    await seed(db)
    async with db:
        db.write.add(Order(id=1, user_id=1, item="book"))
        results = await asyncio.gather(*(db.read.scalars(select(Order.item)) for _ in range(4)))
        assert [list(items) for items in results] == [["book"]] * 4
    assert await stored_orders(db) == ["book"]


async def test_read_flushes_pending_writes_first(db: Database) -> None:
    """A ``db.read`` query after ``db.write.add`` without a flush finds the new row, as
    one session's autoflush would, and a read with nothing pending sends only itself."""
    await seed(db)
    log = StatementLog(db)
    try:
        async with db:
            assert list(await db.read.scalars(select(Order.item))) == []
            assert [role for role, _ in log.statements] == ["read"]
            db.write.add(Order(id=1, user_id=1, item="book"))
            user = await db.write.get(User, 1)
            assert user is not None
            user.name = "Ada L."
            orders = list(await db.read.scalars(select(Order.item)))
            assert orders == ["book"]
            assert (await db.read.scalar(select(User.name))) == "Ada L."
            assert sum(sql.lstrip().upper().startswith("INSERT") for _, sql in log.statements) == 1
    finally:
        log.detach()
    assert await stored_orders(db) == ["book"]


# -- 7. DDL and migrations -----------------------------------------------------------


class NotesBase(DeclarativeBase):
    pass


class Note(NotesBase):
    __tablename__ = "migration_notes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    body: Mapped[str] = mapped_column(String(100))


async def test_create_all_and_drop_all(db: Database) -> None:
    """``db.create_all(metadata)`` and ``db.drop_all(metadata)`` run DDL with the app's
    settings; ``db.engine`` is the write engine for Alembic and other tools."""
    assert db.engine is db.engines.write
    await db.create_all(NotesBase.metadata)
    await db.create_all(NotesBase.metadata)  # tables that exist are left alone
    try:
        async with db:
            db.write.add(Note(id=1, body="hello"))
        async with db:
            assert (await db.read.scalar(select(Note.body))) == "hello"
    finally:
        await db.drop_all(NotesBase.metadata)
    async with db.engine.connect() as connection:
        tables = await connection.run_sync(
            lambda sync: sync.dialect.get_table_names(sync)  # type: ignore[no-any-return]
        )
    assert "migration_notes" not in tables


# -- 8. begin() blocks and explicit commits ------------------------------------------


async def test_begin_block_anywhere_is_part_of_the_unit(db: Database, serve: Any) -> None:
    """``async with db.write.begin():`` works before and after other writes; its work
    commits with the request and rolls back with a 4xx like the rest."""
    app = make_app("begin_block")

    @app.post("/<status:int>")
    async def create(_request: Request, status: int) -> HTTPResponse:
        async with db.write.begin():
            db.write.add(ada(1))
        db.write.add(Order(id=1, user_id=1, item="book"))
        async with db.write.begin():
            db.write.add(Order(id=2, user_id=1, item="lamp"))
        return json({"ok": True}, status=status)

    db.init_app(app)
    served = await serve(app)
    assert (await served.client.post("/422")).status_code == 422
    assert await count_users(db) == 0
    assert (await served.client.post("/201")).status_code == 201
    assert await stored_orders(db) == ["book", "lamp"]


async def test_begin_block_that_raises_rolls_back_only_itself(db: Database) -> None:
    """An exception leaving a ``begin()`` block rolls back the block's work alone; the
    unit goes on and commits the rest."""
    async with db:
        db.write.add(ada(1))
        with pytest.raises(RuntimeError):
            async with db.write.begin():
                db.write.add(ada(2))
                raise RuntimeError("undo the block")
        db.write.add(ada(3))
    assert await stored_names(db) == ["Ada", "Ada"]
    async with db:
        assert list(await db.read.scalars(select(User.id).order_by(User.id))) == [1, 3]


async def test_begin_block_commits_when_the_user_owns_commits(url: str) -> None:
    """With ``commit_on_exit=False`` a ``begin()`` block outside a transaction commits at
    its end and runs its callbacks there; work after it is not committed at exit."""
    from sanic_sqlalchemy.testing import schema

    from .models import Base

    db = Database(url, commit_on_exit=False)
    recorder = CommitRecorder()
    try:
        async with schema(db, Base.metadata):
            async with db:
                async with db.write.begin():
                    db.write.add(ada(1))
                    db.on_commit(recorder, "block")
                assert recorder.args == [("block",)]
                db.write.add(ada(2))
                async with db.write.begin():  # a transaction is open: a savepoint
                    db.write.add(ada(3))
                db.on_commit(recorder, "never committed")
            assert await count_users(db) == 1
            assert recorder.args == [("block",)]
    finally:
        await db.dispose()
