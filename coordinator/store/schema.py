"""The coordinator's database schema: migrations in order (``PRAGMA user_version`` is how many have run)."""

from __future__ import annotations

from coordinator import audit
from coordinator.store import fleet as fleet_schema
from coordinator.store import logs as logs_schema
from coordinator.store import metrics as metrics_schema
from coordinator.store.chunks import LEVELS
from shared.sqlite import Migration

__all__ = ["LEVELS", "MIGRATIONS"]

MIGRATIONS: list[Migration] = [
    # 1: registry and job index
    """
    CREATE TABLE runners (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        status TEXT NOT NULL,
        host TEXT NOT NULL,
        port INTEGER NOT NULL,
        capabilities TEXT NOT NULL,
        tags TEXT NOT NULL,
        metadata TEXT NOT NULL,
        resources TEXT NOT NULL,
        token TEXT NOT NULL,
        registered_at REAL NOT NULL,
        last_seen REAL NOT NULL,
        last_heartbeat REAL,
        heartbeat_interval REAL NOT NULL,
        load TEXT NOT NULL,
        updated_at REAL,
        event_seq INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX runners_status ON runners(status, type);
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        runner_id TEXT NOT NULL REFERENCES runners(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        status TEXT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER,
        reason TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        completed_at REAL,
        delivered INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_runner ON jobs(runner_id, seq);
    CREATE INDEX jobs_runner_status ON jobs(runner_id, status);
    CREATE INDEX jobs_undelivered ON jobs(runner_id, delivered, seq) WHERE delivered = 0;
    CREATE TABLE job_attempts (
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        attempt INTEGER NOT NULL,
        status TEXT NOT NULL,
        exit_code INTEGER,
        reason TEXT,
        started_at REAL,
        completed_at REAL,
        PRIMARY KEY (job_id, attempt)
    );
    CREATE TABLE job_steps (
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        attempt INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        exit_code INTEGER,
        started_at REAL,
        completed_at REAL,
        PRIMARY KEY (job_id, attempt, idx)
    )
    """,
    # 2: log entries, by the runner's outbox sequence
    """
    CREATE TABLE log_entries (
        runner_id TEXT NOT NULL REFERENCES runners(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        ts REAL NOT NULL,
        level INTEGER NOT NULL,
        message TEXT NOT NULL,
        job_id TEXT,
        step TEXT,
        stream TEXT NOT NULL,
        attempt INTEGER,
        PRIMARY KEY (runner_id, seq)
    ) WITHOUT ROWID;
    CREATE INDEX log_entries_job ON log_entries(job_id, seq);
    CREATE INDEX log_entries_time ON log_entries(runner_id, ts)
    """,
    # 3: metric history: raw load samples and their rollups (see coordinator/store/metrics.py)
    metrics_schema.MIGRATION,
    # 4: the audit trail (see coordinator/audit.py)
    audit.MIGRATION,
    # 5: jobs submitted to the fleet: the held pool and their assignments (see coordinator/store/fleet.py)
    fleet_schema.MIGRATION,
    # 6: runner list pages in registration order per filter, read from the index alone
    """
    CREATE INDEX runners_status_seq ON runners(status, type, seq);
    CREATE INDEX runners_type_seq ON runners(type, seq)
    """,
    # 7: log entries kept in chunks, many entries per row (see coordinator/store/chunks.py); the rows of
    # log_entries are converted and the table dropped
    logs_schema.migrate_to_chunks,
]
