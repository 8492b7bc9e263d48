"""What keeps ``db.read`` read-only beyond the database's own read-only mode.

``lexer`` splits SQL text the way each server reads it, ``policy`` decides whether a
statement is a plain query, ``guard`` applies that decision to every statement a read
sends, right before it reaches the driver, and ``refusals`` holds every ``ReadOnlyError``
``db.read`` raises.
"""

from .guard import ReadGuard
from .lexer import Dialect
from .policy import refusal
from .refusals import refused

__all__ = ["Dialect", "ReadGuard", "refusal", "refused"]
