"""Python commands run as real child processes without paying Python's start-up each
time: one server process imports the library and its drivers once, then forks a child
per command (``python -m MODULE ARGS`` or ``python -c CODE``).

The child is a process of its own, as ``python`` started in ``cwd`` with ``env`` would
be: its own working directory, environment, ``sys.argv`` and ``sys.path[0]``, stdin
from ``/dev/null``, stdout and stderr on file descriptors 1 and 2, no module of the
command's directory imported yet, and its exit code as the interpreter would give it
(``SystemExit``'s code, 1 and a traceback for an uncaught exception, atexit handlers
run, stdio flushed).  Only the imports below are done already, before the fork: a
command's start-up cost ~1.3 s of imports, which the CLI tests paid some fifty times.
``tests/test_cli.py`` keeps real ``python -m`` and console-script starts too.

The server is started on first use and stops when the test process exits.  Requests
are JSON lines on its stdin; for each it answers ``{"pid": ...}`` once the child is
forked, then ``{"status": ...}`` (``Popen.returncode``'s convention) once it exited.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

#: What a CLI command imports anyway (its drivers included), done once in the server.
PRELOAD = (
    "sanic_sqlalchemy",
    "sanic_sqlalchemy.cli",
    "sanic",
    "sqlalchemy.ext.asyncio",
    "sqlalchemy.dialects.sqlite.aiosqlite",
    "sqlalchemy.dialects.postgresql.asyncpg",
    "sqlalchemy.dialects.mysql.asyncmy",
)


class ForkServer:
    """The client: one request at a time (a lock), each blocking until its child exits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._buffer = b""

    def run(
        self, argv: list[str], cwd: Path, env: dict[str, str], timeout: float
    ) -> tuple[int, str, str]:
        """``python *argv`` in ``cwd`` with ``env``: its exit code, stdout and stderr.
        A child still running after ``timeout`` seconds is killed (SIGKILL)."""
        with self._lock, tempfile.TemporaryDirectory(prefix="forkserver-") as folder:
            out, err = Path(folder) / "out", Path(folder) / "err"
            request = {"argv": argv, "cwd": str(cwd), "env": env, "out": str(out), "err": str(err)}
            process = self._server()
            assert process.stdin is not None
            process.stdin.write(json.dumps(request).encode() + b"\n")
            process.stdin.flush()
            deadline = time.monotonic() + timeout
            pid = self._reply("pid", deadline)
            try:
                status = self._reply("status", deadline)
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                self._reply("status", time.monotonic() + 30)
                raise
            return status, out.read_text(), err.read_text()

    def _server(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            self._buffer = b""
            self._process = subprocess.Popen(
                [sys.executable, __file__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
            )
            atexit.register(self.close)
        return self._process

    def _reply(self, key: str, deadline: float) -> int:
        process = self._process
        assert process is not None and process.stdout is not None
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([process.stdout], [], [], left)[0]:
                raise TimeoutError(f"the fork server's child gave no {key!r} in time")
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"the fork server exited (code {process.wait()})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        value: int = json.loads(line)[key]
        return value

    def close(self) -> None:
        """Stop the server (end of its stdin) and wait for it."""
        process, self._process = self._process, None
        if process is not None and process.stdin is not None:
            process.stdin.close()
            process.wait(30)


FORKS = ForkServer()


# == the server ===============================================================


def serve() -> None:
    """Read requests on stdin; for each, fork a child, answer its pid, then its status."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    # Replies on a descriptor of their own: what anything prints goes to stderr.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            replies.close()
            _child(request)
        print(json.dumps({"pid": pid}), file=replies, flush=True)
        _, wait_status = os.waitpid(pid, 0)
        status = os.waitstatus_to_exitcode(wait_status)
        print(json.dumps({"status": status}), file=replies, flush=True)


def _child(request: dict[str, object]) -> None:
    """Become ``python *argv`` in the request's directory and environment; never returns."""
    import importlib
    import runpy
    import traceback
    import types

    code = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, key in ((1, "out"), (2, "err")):
            target = os.open(str(request[key]), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
        os.close(null)
        os.chdir(str(request["cwd"]))
        env = request["env"]
        assert isinstance(env, dict)
        os.environ.clear()
        os.environ.update(env)
        argv = request["argv"]
        assert isinstance(argv, list)
        importlib.invalidate_caches()
        try:
            if argv[0] == "-m":
                # As ``python -m``: the current directory first on the path.
                sys.path.insert(0, os.getcwd())
                sys.argv = [argv[1], *argv[2:]]
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            elif argv[0] == "-c":
                sys.path.insert(0, "")
                sys.argv = ["-c", *argv[2:]]
                main = sys.modules["__main__"] = types.ModuleType("__main__")
                exec(compile(argv[1], "<string>", "exec"), main.__dict__)
            else:
                raise ValueError(f"the fork server runs -m or -c, not {argv[0]!r}")
            code = 0
        except SystemExit as exit:
            code = _exit_code(exit.code)
        except BaseException:
            traceback.print_exc()
            code = 1
        # As the interpreter's own exit: wait for threads, run atexit handlers, flush.
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def _exit_code(value: object) -> int:
    """The process exit code for ``SystemExit(value)``, as the interpreter computes it."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


if __name__ == "__main__":
    # Run as a script: not this folder, but each command's own, on the path.
    sys.path.pop(0)
    serve()
