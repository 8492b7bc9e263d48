"""The ``sanic-sqlalchemy`` command: check a configuration, create or drop tables, run
and look after durable tasks.

Every command takes an app or a ``Database`` (``module:app``, ``module:db``, imported
from the current directory) or a URL (``targets``).  ``check`` (``check``) connects to
every server and reports; ``create-all`` / ``drop-all`` (``tables``) run
``db.create_all`` / ``db.drop_all`` for a ``MetaData``; ``tasks work|status|dead|requeue``
(``tasks``) run the dispatcher and show the queue.  URLs are always shown without their
password.  Stdout carries a command's output only (SQLAlchemy's echo and whatever the
target prints on import go to stderr), so ``--json`` stays JSON.  Exit codes: 0 fine,
1 a problem, 2 a usage error (argparse's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence

from sqlalchemy.exc import SQLAlchemyError

from ..errors import SanicSQLAlchemyError
from . import tasks
from .check import check_target, print_check
from .tables import metadata_of, run_tables
from .targets import describe, one_database, render

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sanic-sqlalchemy",
        description="Check a sanic-sqlalchemy configuration, manage tables and tasks.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate the settings and connect to every server")
    check.add_argument("target", metavar="APP_OR_DB", help="MODULE:app, MODULE:db or a URL")
    check.add_argument("--timeout", type=float, default=5.0, help="seconds per server (default 5)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    for name, help_text in (
        ("create-all", "create the tables of a MetaData that do not exist"),
        ("drop-all", "drop the tables of a MetaData (asks for --yes)"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("metadata", metavar="MODULE:METADATA")
        sub.add_argument(
            "--db", help="MODULE:db, MODULE:app or a URL (default: SANIC_DATABASE_URL)"
        )
        if name == "drop-all":
            sub.add_argument("--yes", action="store_true", help="really drop the tables")
    tasks.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv``; returns the exit code (0: everything is fine)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            # Stdout is for the report only: SQLAlchemy's echo (a handler on sys.stdout as
            # it is when an engine is made) and whatever the target prints on import go
            # to stderr, so that --json stays JSON.
            with contextlib.redirect_stdout(sys.stderr):
                results = asyncio.run(check_target(args.target, args.timeout))
            if args.json:
                print(json.dumps(results, indent=2))
            else:
                print_check(results)
            return 0 if all(not result["problems"] for result in results) else 1
        if args.command == "tasks":
            out = sys.stdout
            # As for check: stdout carries the output only (JSON stays JSON).
            with contextlib.redirect_stdout(sys.stderr):
                try:
                    result = asyncio.run(tasks.run(args, out))
                except (OSError, SQLAlchemyError) as error:
                    print(f"error: tasks {args.action}: {describe(error)}", file=sys.stderr)
                    return 1
            tasks.printed(args, result)
            return 0
        if args.command == "drop-all" and not args.yes:
            print(
                "drop-all drops every table of the MetaData and their data; "
                "run it again with --yes.",
                file=sys.stderr,
            )
            return 1
        metadata = metadata_of(args.metadata)
        db = one_database(args.db)
        try:
            asyncio.run(run_tables(args.command, metadata, db))
        except (OSError, SQLAlchemyError) as error:
            print(
                f"error: {args.command} on {render(db.settings.url)} failed: {describe(error)}",
                file=sys.stderr,
            )
            return 1
        print(f"{args.command}: {len(metadata.tables)} table(s) on {render(db.settings.url)}")
        return 0
    except SanicSQLAlchemyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
