"""``sanic-sqlalchemy tasks work|status|dead|requeue``, run as real child processes
against real databases (forked by ``tests/forkserver.py``; the dispatcher under test
started from scratch): tasks that fail until they are dead, and a dispatcher process
stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from sanic_sqlalchemy.cli import main

from .test_cli import module, python, run

#: A module with a task that always fails, one that appends to a file and a slow one;
#: ``prepare`` creates a fresh table, runs the failing ones until they are dead, then
#: defers the others for the dispatcher under test.
JOBS = """
    import asyncio, os
    from sanic_sqlalchemy import Database

    db = Database({url!r}, tasks_table={table!r}, echo={echo!r})

    @db.task(max_attempts=2, backoff=0.001, max_backoff=0.001)
    async def explode(n):
        raise ValueError(f"boom {{n}}")

    @db.task
    async def note(text):
        with open(os.environ["JOBS_OUT"], "a") as out:
            out.write(text + "\\n")

    @db.task
    async def slow(seconds):
        with open(os.environ["JOBS_OUT"], "a") as out:
            out.write(f"start {{seconds}}\\n")
        await asyncio.sleep(seconds)
        with open(os.environ["JOBS_OUT"], "a") as out:
            out.write(f"done {{seconds}}\\n")

    async def prepare(failing, noting, slows=()):
        db.tasks.run_after_commit = False
        await db.tasks.drop_table()
        await db.tasks.create_table()
        async with db:
            for n in range(failing):
                explode.defer(n)
        while (await db.tasks.counts())["dead"] < failing:
            await db.tasks.run_pending()
            await asyncio.sleep(0.01)
        async with db:
            for n in range(noting):
                note.defer(f"note {{n}}")
            for seconds in slows:
                slow.defer(seconds)
        await db.dispose()

    async def drop():
        await db.tasks.drop_table()
        await db.dispose()

"""


async def jobs(
    cwd: Path, url: str, failing: int, noting: int, echo: bool = False, slows: tuple[int, ...] = ()
) -> None:
    """Write ``jobs.py`` on ``url`` (a table of its own) and prepare its tasks."""
    module(cwd, "jobs", JOBS.format(url=url, table=f"t_{uuid.uuid4().hex[:10]}", echo=echo))
    # Imported as ``jobs`` (not run as ``__main__``): the tasks' names are those the
    # command's import gives them.
    code = f"import asyncio, jobs; asyncio.run(jobs.prepare({failing}, {noting}, {slows!r}))"
    result = await python(cwd, "-c", code)
    assert result.code == 0, result.err


async def until(condition: Callable[[], bool], timeout: float) -> None:
    """Return once ``condition()`` holds (another process makes it so), or after
    ``timeout`` seconds; the caller asserts."""
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)


async def drop(cwd: Path) -> None:
    result = await python(cwd, "-c", "import asyncio, jobs; asyncio.run(jobs.drop())")
    assert result.code == 0, result.err


async def test_status_dead_and_requeue(url: str, tmp_path: Path) -> None:
    """Tasks that fail until dead: ``status`` counts them, ``dead`` lists them with their
    error's last line (the whole error with ``--json``), ``requeue`` gives one its
    attempts back and refuses an unknown id with exit code 1."""
    await jobs(tmp_path, url, failing=2, noting=1, echo=True)
    try:
        # Echo is on: its lines go to stderr, stdout stays JSON.
        result = await run(tmp_path, "tasks", "status", "jobs:db", "--json")
        assert result.code == 0, result.err
        status = json.loads(result.out)
        assert (status["pending"], status["running"], status["dead"]) == (1, 0, 2)
        assert status["oldest_waiting_s"] >= 0
        assert "SELECT" in result.err

        result = await run(tmp_path, "tasks", "dead", "jobs:db")
        assert result.code == 0, result.err
        heading, *lines = result.out.splitlines()
        assert heading.startswith("DATABASE_ ")
        assert len(lines) == 3 and "2 dead task(s)" in lines[-1]
        assert all("explode" in line and "attempts 2" in line for line in lines[:2])
        # Deferred in one commit, the two are in no particular order.
        assert sorted(line.rsplit("  ", 1)[1] for line in lines[:2]) == [
            "ValueError: boom 0",
            "ValueError: boom 1",
        ]
        assert "Traceback" not in result.out

        result = await run(tmp_path, "tasks", "dead", "jobs:db", "--json")
        dead = json.loads(result.out)["dead"]
        assert sorted(task["args"] for task in dead) == [[0], [1]]
        assert dead[0]["error"].startswith("Traceback")
        assert dead[0]["attempts"] == 2 and dead[0]["name"].endswith("explode")

        result = await run(tmp_path, "tasks", "requeue", "jobs:db", dead[0]["id"], "--json")
        assert result.code == 0, result.err
        assert json.loads(result.out)["requeued"] == dead[0]["id"]
        result = await run(tmp_path, "tasks", "status", "jobs:db")
        assert result.code == 0, result.err
        assert result.out.startswith("DATABASE_ ")
        assert ": pending 2  running 0  dead 1  oldest due task waiting" in result.out

        result = await run(tmp_path, "tasks", "requeue", "jobs:db", "no-such-task")
        assert result.code == 1
        assert result.out == ""
        assert "error: db.tasks.requeue('no-such-task'): no dead task has this id" in result.err
    finally:
        await drop(tmp_path)


async def test_work_runs_tasks_and_stops_on_sigterm(url: str, tmp_path: Path) -> None:
    """``tasks work`` runs a deferred task, and SIGTERM stops it cleanly (exit 0)."""
    await jobs(tmp_path, url, failing=0, noting=1)
    out = tmp_path / "out.txt"
    try:
        process = await worker(tmp_path, out, grace=5)
        await until(lambda: out.is_file() and bool(out.read_text()), 15)
        assert out.read_text() == "note 0\n"
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 10)
        assert process.returncode == 0, stderr.decode()
        events = [json.loads(line)["event"] for line in stdout.decode().splitlines()]
        assert events == ["started", "stopping", "stopped"]
        result = await run(tmp_path, "tasks", "status", "jobs:db", "--json")
        status = json.loads(result.out)
        assert status.pop("database").startswith("DATABASE_ ")
        assert status == {
            "pending": 0,
            "running": 0,
            "dead": 0,
            "oldest_waiting_s": None,
        }
    finally:
        await drop(tmp_path)


async def worker(cwd: Path, out: Path, grace: float) -> asyncio.subprocess.Process:
    """``tasks work jobs:db --json`` started in ``cwd``; the tasks write to ``out``."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sanic_sqlalchemy",
        "tasks",
        "work",
        "jobs:db",
        "--json",
        "--grace",
        str(grace),
        cwd=cwd,
        env={**os.environ, "JOBS_OUT": str(out)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.backends("sqlite")
async def test_sigterm_lets_runs_finish_within_grace_and_hands_back_the_rest(
    url: str, tmp_path: Path
) -> None:
    """At SIGTERM a task that ends within ``--grace`` finishes; one that would not is
    handed back, waiting again with no attempt spent."""
    await jobs(tmp_path, url, failing=0, noting=0, slows=(1, 60))
    out = tmp_path / "out.txt"
    try:
        process = await worker(tmp_path, out, grace=3)
        await until(lambda: _starts(out) == 2, 15)
        assert _starts(out) == 2
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 10)
        assert process.returncode == 0, stderr.decode()
        assert "done 1" in out.read_text() and "done 60" not in out.read_text()
        result = await run(tmp_path, "tasks", "status", "jobs:db", "--json")
        status = json.loads(result.out)
        assert (status["pending"], status["running"], status["dead"]) == (1, 0, 0)
    finally:
        await drop(tmp_path)


def _starts(path: Path) -> int:
    text = path.read_text() if path.is_file() else ""
    return text.count("start ")


async def test_work_wants_registered_tasks(tmp_path: Path) -> None:
    """``tasks work URL`` has no task to run: exit 1, saying what to pass."""
    result = await run(tmp_path, "tasks", "work", f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    assert result.code == 1
    assert "no @db.task is registered" in result.err


def test_usage_errors_exit_2() -> None:
    """A missing argument is a usage error: exit code 2 (argparse's)."""
    with pytest.raises(SystemExit) as exit:
        main(["tasks", "requeue", "jobs:db"])
    assert exit.value.code == 2


#: An app with two databases (the second through another prefix), each with a task.
TWO = """
    import os
    from sanic import Sanic
    from sanic_sqlalchemy import Database

    app = Sanic("two_dbs")
    main = Database(config_prefix="DATABASE_")
    other = Database(config_prefix="OTHER_DATABASE_")
    main.init_app(app, {url!r}, tasks_table={table!r})
    other.init_app(app, {url!r}, tasks_table={table!r} + "_b")

    @other.task
    async def note(text):
        with open(os.environ["JOBS_OUT"], "a") as out:
            out.write(text + "\\n")

    async def prepare():
        other.tasks.run_after_commit = False
        for db in (main, other):
            await db.tasks.create_table()
        async with other:
            note.defer("from other")
        for db in (main, other):
            await db.dispose()

    async def drop():
        for db in (main, other):
            await db.tasks.drop_table()
            await db.dispose()
"""


async def test_an_app_with_two_databases_names_them_and_takes_a_prefix(
    url: str, tmp_path: Path
) -> None:
    """``status`` refuses to guess and lists the prefixes; ``--prefix`` picks one and the
    output names it; ``work`` without a prefix runs the tasks of the database that has
    some."""
    table = f"t_{uuid.uuid4().hex[:10]}"
    module(tmp_path, "two", TWO.format(url=url, table=table))
    result = await python(tmp_path, "-c", "import asyncio, two; asyncio.run(two.prepare())")
    assert result.code == 0, result.err
    out = tmp_path / "out.txt"
    try:
        result = await run(tmp_path, "tasks", "status", "two:app")
        assert result.code == 1
        assert "2 databases (DATABASE_, OTHER_DATABASE_)" in result.err
        assert "--prefix" in result.err
        result = await run(tmp_path, "tasks", "status", "two:app", "--prefix", "OTHER_DATABASE_")
        assert result.code == 0, result.err
        assert result.out.startswith("OTHER_DATABASE_ ")
        assert ": pending 1  running 0  dead 0" in result.out
        result = await run(tmp_path, "tasks", "status", "two:app", "--prefix", "NOPE_")
        assert result.code == 1 and "no database with prefix 'NOPE_'" in result.err

        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sanic_sqlalchemy", "tasks", "work", "two:app", "--json",
            cwd=tmp_path, env={**os.environ, "JOBS_OUT": str(out)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await until(lambda: out.is_file() and bool(out.read_text()), 15)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 10)
        assert process.returncode == 0, stderr.decode()
        assert out.read_text() == "from other\n"
        [started] = [json.loads(line) for line in stdout.decode().splitlines()][:1]
        assert started["database"].startswith("OTHER_DATABASE_ ")
    finally:
        result = await python(tmp_path, "-c", "import asyncio, two; asyncio.run(two.drop())")
        assert result.code == 0, result.err


async def test_a_missing_tasks_table_says_how_to_create_it(url: str, tmp_path: Path) -> None:
    module(
        tmp_path,
        "bare",
        f"from sanic_sqlalchemy import Database\n"
        f"db = Database({url!r}, tasks_table='t_missing_{uuid.uuid4().hex[:8]}')\n",
    )
    result = await run(tmp_path, "tasks", "status", "bare:db")
    assert result.code == 1
    assert "does not exist" in result.err
    assert "await db.tasks.create_table()" in result.err and "db.tasks.metadata" in result.err
