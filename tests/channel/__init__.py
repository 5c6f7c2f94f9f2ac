"""Tests of the agent channel: delivery without loss across cuts and restarts, agents behind unreachable addresses."""
