"""The coordinator's system of record: the runner registry, the job index and event ingestion.

``base.Store`` is the interface the handlers use; ``sqlite.SqliteStore`` is the embedded default. A replicated
database can take its place by implementing the same protocol.
"""
