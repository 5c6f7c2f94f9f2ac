"""Benchmarks: each ``bench/bench_*.py`` is a runnable script (``make bench`` runs them all with the venv python)."""
