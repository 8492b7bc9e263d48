"""Where a request is in its life, as the Sanic layer sees it: one state per request."""

from __future__ import annotations

from enum import Enum


class Phase(Enum):
    """The phase of a request, from routing to its answer."""

    #: Routed, its handler not started yet (request middleware runs here).
    ROUTED = "routed"
    #: Its handler runs.
    HANDLING = "handling"
    #: Its handler returned or raised; the response is not sent yet.
    HANDLED = "handled"
    #: The response streams (from the handler, or a ``ResponseStream``'s function): the
    #: units are settled, reads go on until it ends.
    STREAMING = "streaming"
    #: Answered: its units have ended and no unit is created for it any more.
    OVER = "over"
