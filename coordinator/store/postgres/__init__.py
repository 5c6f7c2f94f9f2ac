"""The PostgreSQL engine: the coordinator's stores on a shared server, so several coordinators serve one fleet.

``database.PostgresDatabase`` is the connection pool and the versioned schema (``schema.MIGRATIONS``); each
store module here implements one protocol of ``coordinator.store`` on it. asyncpg is imported only inside this
package, so an SQLite configuration never loads it.
"""
