"""The engine layer: everything that differs per server (``backends``), the engines of
one worker (``engines``) and the liveness check of their pools (``liveness``)."""
