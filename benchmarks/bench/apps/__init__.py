"""One Sanic application per variant, all serving the same endpoints and the same JSON.

Every module has ``create_app(url: str, backend: str) -> Sanic`` where ``backend`` is
``"postgresql"`` or ``"mysql"``.  The SQL each variant sends is described in
benchmarks/README.md ("What each variant does").
"""

#: variant name -> (module, backends it supports, human label)
VARIANTS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "raw-asyncpg": ("raw_asyncpg", ("postgresql",), "raw asyncpg (pool)"),
    "raw-asyncmy": ("raw_asyncmy", ("mysql",), "raw asyncmy (pool)"),
    "core": ("core", ("postgresql", "mysql"), "SQLAlchemy Core by hand"),
    "orm": ("orm", ("postgresql", "mysql"), "ORM session per request (middleware)"),
    "advanced-alchemy": ("advanced_alchemy_ext", ("postgresql",), "advanced-alchemy Sanic ext"),
    "ours": ("ours", ("postgresql", "mysql"), "sanic-sqlalchemy (ours)"),
    # Not run by default: ours with every query-insight report on (none triggering).
    "ours-insight": ("ours_insight", ("postgresql", "mysql"), "ours, query insight on"),
    # Not run by default: ours with one no-op unit_end listener (issue 19).
    "ours-listener": ("ours_listener", ("postgresql", "mysql"), "ours, one no-op listener"),
    # Not run by default: ours on another checkout (BENCH_BASELINE_SRC), to measure a
    # change against its parent in the same run.
    "ours-baseline": ("ours_baseline", ("postgresql", "mysql"), "ours, baseline checkout"),
    # Not run by default: ours on the previous main (BENCH_PREVIOUS_SRC), beside the
    # baseline, so that a change is compared with the main it replaces too.
    "ours-previous": ("ours_previous", ("postgresql", "mysql"), "ours, previous main"),
    # Not run by default (benchmarks/tasks.py): POST /users with after-commit work.
    "ours-defer": ("ours_defer", ("postgresql", "mysql"), "ours, defers a durable task"),
    "ours-on-commit": ("ours_on_commit", ("postgresql", "mysql"), "ours, db.on_commit"),
    # Diagnostic (not run by default): ours's design by hand, without its guard rails.
    "orm-readonly": ("orm_readonly", ("postgresql",), "diagnostic: ours's design by hand"),
}
