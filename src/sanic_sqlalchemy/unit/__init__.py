"""The unit of work: one ContextVar (``scope``), turns on a connection (``gate``),
on-commit callbacks (``callbacks``), the commit rule (``outcome``), what a unit is
handed (``environment``), what its sessions share (``core``), the sessions
(``sessions``) and the unit's life (``lifecycle``)."""

from .core import UnitState
from .environment import Environment, OuterTransaction
from .lifecycle import UnitOfWork
from .scope import UnitScope

__all__ = ["Environment", "OuterTransaction", "UnitOfWork", "UnitScope", "UnitState"]
