"""``DATABASE_TASKS_BACKEND``'s queue, found when the database is configured: the module
imported, the broker or app looked up, the queue's package imported only then."""

from __future__ import annotations

from ..._lookup import AttributeNotFound, ImportFailed, find
from ...errors import ConfigurationError
from ...settings import QueueTarget
from .relay import Queue, Relay, RelayHost

#: The package each kind needs, and the extra that installs it.
_PACKAGES = {"taskiq": "taskiq", "celery": "celery"}


def open_relay(host: RelayHost, target: QueueTarget) -> Relay:
    """A relay to the queue ``target`` names; ``ConfigurationError`` naming the setting
    when the module cannot be imported, lacks the attribute, or holds no broker or app
    of that kind."""
    text = f"{target.kind}:{target.module}:{target.attribute}"
    try:
        # The setting's parser made sure of the shape: no MalformedName here.
        found = find(f"{target.module}:{target.attribute}")
    except ImportFailed as failure:
        raise ConfigurationError(
            f"{target.key}: importing module {target.module!r} (from {text!r}) failed: "
            f"{failure.error!r}. Name a module importable here, such as 'shop.queue' for "
            "shop/queue.py on the path."
        ) from failure.error
    except AttributeNotFound:
        raise ConfigurationError(
            f"{target.key}: module {target.module!r} has no attribute "
            f"{target.attribute!r} (from {text!r}). If that module configures this "
            "database, define the broker or app above that line, or move it to a module "
            "of its own."
        ) from None
    try:
        if target.kind == "taskiq":
            from .taskiq_queue import taskiq_queue

            queue: Queue = taskiq_queue(found, text, target.key, host)
        else:
            from .celery_queue import celery_queue

            queue = celery_queue(found, text, target.key, host)
    except ImportError as error:
        raise ConfigurationError(
            f"{target.key}: {text!r} needs the {_PACKAGES[target.kind]!r} package: "
            f"pip install 'sanic-sqlalchemy[{target.kind}]'."
        ) from error
    relay = Relay(host, queue, target)
    for task in list(host.registered.values()):
        relay.register(task)
    return relay
