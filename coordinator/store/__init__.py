"""The coordinator's system of record: the runner registry, the job index, fleet jobs, logs, metric history and
the audit trail's storage.

``base.Store`` and the protocols in ``protocols`` are what handlers and tasks use; ``factory.build`` makes one of
each for the configured engine: SQLite (``sqlite``, ``fleet``, ``metrics``, ``logs``; the embedded default) or
PostgreSQL (the ``postgres`` package, for several coordinators on one database).
"""
