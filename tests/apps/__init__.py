"""Sanic applications that the tests serve from real ``sanic`` processes."""
