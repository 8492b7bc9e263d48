"""The benchmark harness of sanic-sqlalchemy (see benchmarks/README.md)."""
