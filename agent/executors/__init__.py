"""Executors: how a job's steps actually run (native subprocess, Docker, Kubernetes).

``base.Executor`` is the one small protocol; each backend is one module, so a new backend is one new file.
"""
