"""Every ```python block of docs/**/*.md and README.md runs, page by page (Sybil).

The blocks of a page run in order in one namespace, on one event loop, with top-level
``await`` allowed. The namespace starts with what the guides assume: ``db`` (a
``Database`` on SQLite in the test's folder, its tables created), ``app`` (a Sanic app
that ``db`` is installed on: ``await app.asgi_client.get(...)`` runs a request through
Sanic's test client), the models ``Base``, ``User`` and ``Order``, and
``TEST_POSTGRES_URL`` (``None`` when unset). A page may define its own. After a block,
every ``test_*`` function it defined is called (awaited when async), its parameters
taken from the namespace by name: a documented test runs as written. A block preceded by
``% skip: next "reason"`` is not run; the reason is required.

A block whose first line is ``# file: PATH`` is a file of a project the page builds (the
tutorial's): it is written to PATH in the test's folder, and a Python module there (but
under ``tests/`` and ``migrations/``) is imported and its names join the namespace. Then
the page's console steps run as its reader would run them: with a ``migrations/env.py``,
``alembic init -t async migrations`` (that file replacing the template's), ``alembic
revision --autogenerate`` and ``alembic upgrade head``; with files under ``tests/``,
``pytest`` — each in a process of its own.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import SkipTest

import pytest
from sanic import Sanic
from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sybil import Example, Sybil
from sybil.parsers.myst import CodeBlockParser, SkipParser

from sanic_sqlalchemy import Database

from .forkserver import FORKS

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")],
    key=lambda path: path.relative_to(ROOT).as_posix(),
)
PAGES = [page for page in PAGES if "_build" not in page.parts]


FILE_LINE = re.compile(r"# file: (\S+)\n")


class PageRunner:
    """Evaluates a page's Python blocks on one event loop, calling the tests they define."""

    def __init__(self, loop: asyncio.AbstractEventLoop, folder: Path) -> None:
        self.loop = loop
        self.folder = folder
        self.written: list[Path] = []
        self.modules: list[str] = []

    def write_file(self, example: Example) -> Path | None:
        """Write a ``# file: PATH`` block to PATH; return the path, or None for other blocks."""
        match = FILE_LINE.match(str(example.parsed))
        if match is None:
            return None
        path = self.folder / match.group(1)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(example.parsed)[match.end() :])
        self.written.append(path)
        return path

    def write_only(self, example: Example) -> None:
        """The evaluator of non-Python blocks: write ``# file:`` ones, ignore the rest."""
        self.write_file(example)

    def __call__(self, example: Example) -> None:
        namespace = example.namespace
        path = self.write_file(example)
        if path is not None:
            relative = path.relative_to(self.folder)
            if path.suffix == ".py" and relative.parts[0] not in ("tests", "migrations"):
                name = ".".join(relative.with_suffix("").parts)
                module = importlib.import_module(name)
                self.modules.append(name)
                namespace.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
            return
        source = "\n" * (example.line + example.parsed.line_offset) + example.parsed
        before = set(namespace)
        code = compile(
            source,
            str(example.path),
            "exec",
            flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            dont_inherit=True,
        )
        result = eval(code, namespace)
        if inspect.iscoroutine(result):
            self.loop.run_until_complete(result)
        namespace.pop("__builtins__", None)
        for name in sorted(set(namespace) - before):
            if name.startswith("test_") and inspect.isfunction(namespace[name]):
                self.call_test(namespace[name], namespace)

    def call_test(self, test: Callable[..., Any], namespace: dict[str, Any]) -> None:
        missing = [p for p in inspect.signature(test).parameters if p not in namespace]
        if missing:
            raise AssertionError(f"{test.__name__} asks for {missing}, not in the namespace")
        result = test(*(namespace[p] for p in inspect.signature(test).parameters))
        if inspect.iscoroutine(result):
            self.loop.run_until_complete(result)


def guide_models() -> dict[str, Any]:
    """The models the guides' examples use, on a metadata of this page's own."""

    class Base(DeclarativeBase):
        pass

    class User(Base):
        __tablename__ = "users"

        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(100))
        email: Mapped[str] = mapped_column(String(200), unique=True, default="")

    class Order(Base):
        __tablename__ = "orders"

        id: Mapped[int] = mapped_column(primary_key=True)
        user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
        item: Mapped[str] = mapped_column(String(200))
        quantity: Mapped[int] = mapped_column(default=1)
        status: Mapped[str] = mapped_column(String(20), default="placed")

    return {"Base": Base, "User": User, "Order": Order}


def databases(namespace: dict[str, Any]) -> Iterator[Database]:
    seen: set[int] = set()
    for value in list(namespace.values()):
        if isinstance(value, Database) and id(value) not in seen:
            seen.add(id(value))
            yield value


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_page_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each Python block of the page runs, in order; a skipped block says why."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    loop = asyncio.new_event_loop()
    runner = PageRunner(loop, tmp_path)
    sybil = Sybil(
        parsers=[
            CodeBlockParser(language="python", evaluator=runner),
            CodeBlockParser(language="toml", evaluator=runner.write_only),
            SkipParser(),
        ]
    )
    document = sybil.parse(page)
    # sanic-testing's ASGI client patches Sanic.__call__ for the whole class, which breaks
    # later tests that serve an app through uvicorn: put both settings back afterwards.
    sanic_call, test_mode = vars(Sanic)["__call__"], Sanic.test_mode
    Sanic.test_mode = True
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'docs.db'}")
    app = Sanic(f"docs_{uuid.uuid4().hex[:12]}")
    db.init_app(app)
    models = guide_models()
    document.namespace.update(
        db=db,
        app=app,
        TEST_POSTGRES_URL=os.environ.get("TEST_POSTGRES_URL"),
        __name__="docs_example",
        **models,
    )
    loop.run_until_complete(db.create_all(models["Base"].metadata))
    try:
        for example in document.examples():
            if isinstance(example.parsed, tuple):  # a skip marker
                action, reason = example.parsed
                if action == "next" and not reason:
                    raise AssertionError(
                        f"{page.name}, line {example.line}: say why the block is skipped: "
                        '% skip: next "reason"'
                    )
            try:
                example.evaluate()
            except SkipTest:  # the block after a skip marker: not run
                continue
    finally:
        for database in databases(document.namespace):
            loop.run_until_complete(database.dispose())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        Sanic.__call__, Sanic.test_mode = sanic_call, test_mode  # type: ignore[method-assign]
        for name in runner.modules:  # and the packages they made: shop.app, then shop
            parts = name.split(".")
            for end in range(len(parts), 0, -1):
                sys.modules.pop(".".join(parts[:end]), None)
    if tmp_path / "migrations" / "env.py" in runner.written:
        run_project_migrations(tmp_path)
    if any(path.relative_to(tmp_path).parts[0] == "tests" for path in runner.written):
        # Started afresh: pytest imports the library's plugin itself, as in the project.
        run_project(tmp_path, "pytest", "-q", "-p", "no:cacheprovider")


def run_project(folder: Path, *command: str, forked: bool = False, **environment: str) -> None:
    """Run ``python -m COMMAND`` in the project a page wrote; fail with its output.
    ``forked``: a child of the fork server (``tests/forkserver.py``), whose imports are
    done already; otherwise a Python started for it."""
    variables = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env = {**variables, **environment}
    if forked:
        code, out, err = FORKS.run(["-m", *command], folder, env, 120)
    else:
        result = subprocess.run(
            [sys.executable, "-m", *command],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        code, out, err = result.returncode, result.stdout, result.stderr
    assert code == 0, f"{' '.join(command)} fails in the page's project:\n{out}{err}"


def run_project_migrations(folder: Path) -> None:
    """Alembic as the page tells its reader: init, the page's env.py, autogenerate, upgrade."""
    env_py = folder / "migrations" / "env.py"
    written = env_py.read_text()
    env_py.unlink()
    env_py.parent.rmdir()
    database = {"SANIC_DATABASE_URL": "sqlite+aiosqlite:///migrated.db"}
    run_project(folder, "alembic", "init", "-t", "async", "migrations", forked=True)
    env_py.write_text(written)
    run_project(
        folder, "alembic", "revision", "--autogenerate", "-m", "first", forked=True, **database
    )
    run_project(folder, "alembic", "upgrade", "head", forked=True, **database)
    with sqlite3.connect(folder / "migrated.db") as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"users", "orders", "alembic_version"} <= tables, tables
