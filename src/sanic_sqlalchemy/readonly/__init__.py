"""What keeps ``db.read`` read-only beyond the database's own read-only mode.

``lexer`` splits SQL text the way each server reads it, ``policy`` decides whether a
statement is a plain query, and ``guard`` applies that decision to every statement a
read sends, right before it reaches the driver.
"""

from .._keys import READ_OPTION
from .guard import ReadGuard, refused
from .lexer import Dialect
from .policy import refusal

__all__ = ["READ_OPTION", "Dialect", "ReadGuard", "refusal", "refused"]
