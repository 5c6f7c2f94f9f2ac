"""The coordinator: the public HTTP API, the runner registry and job index, and the channel to the agents.

It is the system of record for what users see. Runner-specific calls are proxied to the agent that owns the
runner; jobs for a runner whose agent is away are held here and delivered when it comes back.
"""
