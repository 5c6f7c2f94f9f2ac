"""Code both daemons and the SDK share: the wire format, error codes, config loading, logging and task helpers.

Nothing here imports ``agent`` or ``coordinator``; both sides import from here, so one change to a wire model
changes the coordinator, the agent, the SDK and the OpenAPI document together.
"""
