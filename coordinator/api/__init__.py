"""HTTP handlers of the public API, one module per resource, and the agent-facing ingest endpoints."""
