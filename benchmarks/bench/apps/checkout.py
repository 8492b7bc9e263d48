"""The ``ours`` app on another checkout of sanic-sqlalchemy, whose ``src`` folder an
environment variable names: a change measured against earlier code in the same run."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from sanic import Sanic


def ours_from(variable: str, variant: str) -> Any:
    """Import the ``ours`` app module with ``sanic_sqlalchemy`` taken from ``$variable``."""
    source = os.environ.get(variable)
    if not source or not os.path.isdir(os.path.join(source, "sanic_sqlalchemy")):
        raise SystemExit(f"{variant} needs {variable}=<a checkout>/src")
    if "sanic_sqlalchemy" in sys.modules:
        raise SystemExit(f"{variant}: sanic_sqlalchemy was imported before the checkout's path")
    sys.path.insert(0, source)
    ours = importlib.import_module(".ours", __package__)
    imported = sys.modules["sanic_sqlalchemy"].__file__ or ""
    if not os.path.realpath(imported).startswith(os.path.realpath(source)):
        raise SystemExit(f"{variant}: sanic_sqlalchemy came from {imported}")
    return ours


def create_app_from(variable: str, variant: str, url: str, backend: str) -> Sanic[Any, Any]:
    app: Sanic[Any, Any] = ours_from(variable, variant).create_app(url, backend)
    return app
