"""The agent: the daemon on each runner host.

It registers its runner with the coordinator and keeps that identity across restarts, takes the jobs the
coordinator pushes, runs their steps through an executor, and reports heartbeats and job events back over one
outbound channel. It is the system of record for what runs on its host: queue, processes and unshipped events
live in SQLite in its state directory, so a SIGKILL loses none of them.
"""
