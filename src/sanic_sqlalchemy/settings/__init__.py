"""Frozen, validated settings: ``values`` parses one setting and names its key when it is
bad; ``model`` builds the frozen ``Settings`` from explicit arguments, then
``app.config``."""

from .model import (
    CONFIG_KEYS,
    DEFAULT_PREFIX,
    TOKEN_TTL_MARGIN,
    InsightSettings,
    QueueTarget,
    ReplicaFallback,
    ReplicaSettings,
    Settings,
    TasksSettings,
    default_token_names,
    token_name_clash,
)
from .values import backend_of, pool_accepts_size, public_url

__all__ = [
    "CONFIG_KEYS",
    "DEFAULT_PREFIX",
    "TOKEN_TTL_MARGIN",
    "InsightSettings",
    "QueueTarget",
    "ReplicaFallback",
    "ReplicaSettings",
    "Settings",
    "TasksSettings",
    "backend_of",
    "default_token_names",
    "pool_accepts_size",
    "public_url",
    "token_name_clash",
]
