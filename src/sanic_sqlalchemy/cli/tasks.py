"""``tasks work|status|dead|requeue``: run and look after the durable tasks of one database.

``work`` imports the module named by ``APP_OR_DB`` (so that its ``@db.task`` functions
are registered, as in the server), runs ``db.tasks.work()`` until SIGINT or SIGTERM, then
stops claiming, lets the running tasks finish within ``--grace`` seconds and hands the
rest back.  ``status`` shows the counts and how long the longest-waiting due task has
waited (the number to watch: it grows when the dispatchers fall behind); ``dead`` the
tasks out of attempts with their error's last line; ``requeue`` gives one its attempts
back.  Each prints JSON with ``--json``.

An app with several databases: ``--prefix ANALYTICS_DATABASE_`` (a database's
``config_prefix``) picks one; without it, ``work`` dispatches the tasks of every database
that has some, and the other actions refuse and list the prefixes to choose from.  Every
output names its database (prefix and URL).
"""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any, TextIO

from sqlalchemy import func, select

from ..database import DatabaseCore as Database
from ..tasks.sql import now_ms
from ..tasks.table import PENDING
from .targets import CommandError, databases, render

#: Seconds running tasks get to finish after SIGINT/SIGTERM (Sanic's graceful-shutdown default).
GRACE = 15.0


def named(db: Database) -> str:
    """How outputs name a database: its settings prefix and its URL."""
    return f"{db.config_prefix} {render(db.settings.url)}"


def chosen(target: str | None, prefix: str | None, action: str) -> list[Database]:
    """The databases ``tasks ACTION`` works on: the one with ``prefix``, the only one,
    or (``work`` only) every one that has tasks."""
    if target is None:
        raise CommandError("Which database? Pass MODULE:app, MODULE:db or a URL.")
    found = databases(target)
    prefixes = ", ".join(db.config_prefix for db in found)
    if prefix is not None:
        picked = [db for db in found if db.config_prefix == prefix]
        if not picked:
            raise CommandError(f"{target!r} has no database with prefix {prefix!r} ({prefixes}).")
        return picked
    if len(found) == 1:
        return found
    if action == "work":
        with_tasks = [db for db in found if db.tasks.registered]
        return with_tasks or found[:1]
    raise CommandError(
        f"{target!r} has {len(found)} databases ({prefixes}): pick one with --prefix, "
        f"e.g. sanic-sqlalchemy tasks {action} {target} --prefix {found[-1].config_prefix}"
    )


async def status(db: Database) -> dict[str, Any]:
    """The counts by state, and the seconds the longest-waiting due task has waited
    (None when nothing is due)."""
    counts = await db.tasks.counts()
    c = db.tasks.table.c
    now = now_ms()
    async with db.tasks.transaction() as connection:
        due = select(func.min(c.run_at)).where(c.state == PENDING, c.run_at <= now)
        oldest = (await connection.execute(due)).scalar()
    waited = None if oldest is None else round((now - oldest) / 1000, 1)
    return {"database": named(db), **counts, "oldest_waiting_s": waited}


async def dead(db: Database) -> list[dict[str, Any]]:
    """The dead tasks as plain data (``db.tasks.dead()``), oldest first."""
    return [
        {
            "id": task.id,
            "name": task.name,
            "args": task.args,
            "kwargs": task.kwargs,
            "attempts": task.attempts,
            "error": task.error,
        }
        for task in await db.tasks.dead()
    ]


async def work(dbs: list[Database], grace: float, out: TextIO, as_json: bool) -> None:
    """Dispatch the tasks of ``dbs`` until SIGINT or SIGTERM, then stop within ``grace``
    seconds."""
    if not any(db.tasks.registered for db in dbs):
        raise CommandError(
            "no @db.task is registered on this database: pass the module that defines "
            "the tasks (MODULE:db or MODULE:app), not a URL or another module."
        )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    for db in dbs:
        names = sorted(db.tasks.registered)
        _say(out, as_json, {"event": "started", "database": named(db), "tasks": names})
        db.tasks.start()
    try:
        await stop.wait()
        _say(out, as_json, {"event": "stopping", "grace_s": grace})
        await asyncio.gather(*(db.tasks.stop(grace) for db in dbs))
    finally:
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(number)
    _say(out, as_json, {"event": "stopped"})


def _say(out: TextIO, as_json: bool, event: dict[str, Any]) -> None:
    if as_json:
        print(json.dumps(event), file=out, flush=True)
        return
    kind = event["event"]
    if kind == "started":
        tasks = ", ".join(event["tasks"])
        line = f"working on {event['database']}: {tasks} (Ctrl-C or SIGTERM stops)"
    elif kind == "stopping":
        line = f"stopping: running tasks get {event['grace_s']:g} s, the rest are handed back"
    else:
        line = "stopped"
    print(line, file=out, flush=True)


async def run(args: Any, out: TextIO) -> Any:
    """Run ``tasks ACTION`` for the parsed ``args``; what to print (None: nothing)."""
    dbs = chosen(args.target, args.prefix, args.action)
    db = dbs[0]
    try:
        if args.action == "work":
            await work(dbs, args.grace, out, args.json)
            return None
        if args.action == "status":
            return await status(db)
        if args.action == "dead":
            return {"database": named(db), "dead": await dead(db)}
        await db.tasks.requeue(args.id)
        return {"database": named(db), "requeued": args.id}
    finally:
        for one in dbs:
            await one.dispose()


def print_status(result: dict[str, Any]) -> None:
    """``status`` for a terminal: one line."""
    waited = result["oldest_waiting_s"]
    late = "nothing due" if waited is None else f"oldest due task waiting {_age(waited)}"
    # "sent": with a queue backend, published and waiting in the queue.
    sent = f"sent {result['sent']}  " if "sent" in result else ""
    print(
        f"{result['database']}: pending {result['pending']}  {sent}running {result['running']}  "
        f"dead {result['dead']}  {late}"
    )


def print_dead(result: dict[str, Any]) -> None:
    """``dead`` for a terminal: one line per task, its error's last line."""
    tasks = result["dead"]
    print(f"{result['database']}:")
    if not tasks:
        print("no dead tasks")
        return
    width = max(len(task["name"]) for task in tasks)
    for task in tasks:
        lines = (task["error"] or "").strip().splitlines()
        last = lines[-1] if lines else "(no error recorded)"
        print(f"{task['id']}  {task['name']:<{width}}  attempts {task['attempts']}  {last}")
    print(
        f"{len(tasks)} dead task(s); requeue one with: sanic-sqlalchemy tasks requeue APP_OR_DB ID"
    )


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:g} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def add_parser(commands: Any) -> None:
    """The ``tasks`` command and its four actions."""
    tasks = commands.add_parser("tasks", help="run and look after durable tasks")
    actions = tasks.add_subparsers(dest="action", required=True)
    for name, help_text in (
        ("work", "run the dispatcher until SIGINT/SIGTERM"),
        ("status", "pending, running and dead tasks, and the oldest due task's wait"),
        ("dead", "the tasks out of attempts, with their last error"),
        ("requeue", "give a dead task its attempts back"),
    ):
        sub = actions.add_parser(name, help=help_text)
        sub.add_argument("target", metavar="APP_OR_DB", help="MODULE:app, MODULE:db or a URL")
        if name == "requeue":
            sub.add_argument("id", metavar="ID", help="the dead task's id")
        if name == "work":
            sub.add_argument(
                "--grace",
                type=float,
                default=GRACE,
                help=f"seconds running tasks get to finish at a stop (default {GRACE:g})",
            )
        sub.add_argument(
            "--prefix",
            help="with several databases in the app: the config prefix of the one to use "
            "(e.g. ANALYTICS_DATABASE_); work without it runs every database's tasks",
        )
        sub.add_argument("--json", action="store_true", help="print JSON")


def printed(args: Any, result: Any) -> None:
    """Print ``result`` of ``tasks ACTION`` to stdout, for a terminal or as JSON."""
    if result is None:
        return
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.action == "status":
        print_status(result)
    elif args.action == "dead":
        print_dead(result)
    else:
        print(f"{result['database']}: requeued {result['requeued']}")
