"""docs/api.md documents every field of every body a client sends."""

from __future__ import annotations

from pydantic import BaseModel

from shared import models
from tests.helpers import REPO

BODIES = (
    models.RunnerRegistration,
    models.RunnerUpdate,
    models.Resources,
    models.JobSubmission,
    models.FleetJobSubmission,
    models.StepSpec,
    models.RunnerConfigUpdate,
    models.ResourceLimits,
    models.DockerConfig,
    models.StopRequest,
    models.RestartRequest,
    models.BulkRequest,
    models.BulkFilters,
)


# Bodies of the agent's own channel (heartbeats, events, job delivery), not for clients.
AGENT_CHANNEL = {"Heartbeat", "EventBatch", "JobEvent", "StepEvent", "LogEvent", "MetricSample", "JobAssignment"}


def test_the_list_covers_every_request_model() -> None:
    requests = {
        name
        for name, value in vars(models).items()
        if isinstance(value, type) and issubclass(value, models.Request) and value is not models.Request
    }
    assert requests - AGENT_CHANNEL == {model.__name__ for model in BODIES}


def test_every_field_of_every_request_body_is_documented() -> None:
    text = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    section = text[text.index("## Request bodies") : text.index("## Errors")]
    missing = [
        f"{model.__name__}.{name}" for model in BODIES for name in model.model_fields if f"`{name}`" not in section
    ]
    assert not missing, missing
    assert all(issubclass(model, BaseModel) for model in BODIES)
    for field in ("image", "masked", "on_log_limit", "data"):
        assert f"| `{field}` |" in section, field
