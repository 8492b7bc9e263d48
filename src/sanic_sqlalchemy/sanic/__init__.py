"""The Sanic integration, and the only package that imports Sanic.

``install`` hooks a database into an app, ``request`` makes every request a unit of
work and settles it before the response is sent, ``handlers`` wraps route handlers,
``hangup`` watches for ASGI clients that hang up, ``responses`` adds headers and the
503 answers, ``injection`` gives handlers their sessions with sanic-ext.
"""

from .database import Database

__all__ = ["Database"]
