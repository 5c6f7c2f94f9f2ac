"""An agent whose advertised address refuses connections (behind NAT or a firewall) gets the whole API.

The agent listens on 127.0.0.1 and advertises 127.0.0.9, where nothing listens: everything the public API does
for its runner must go over the channel the agent opened.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import CoordinatorHandle, StartAgent
from tests.helpers import TERMINAL, ProcessMarker, submit_job, wait_for

UNREACHABLE = "127.0.0.9"


async def test_submit_status_health_config_control_and_cancel_work_through_the_channel(
    coordinator: CoordinatorHandle, start_agent: StartAgent, process_marker: Callable[[], ProcessMarker]
) -> None:
    agent = await start_agent(listen={"advertise_host": UNREACHABLE})
    api = coordinator.api
    runner_id = agent.identity().runner_id
    _, runner = await api.get(f"/runners/{runner_id}")
    assert runner["host"] == UNREACHABLE  # information only

    # job
    job_id = await submit_job(api, runner_id, "hello", "echo hello")
    assert (await api.wait_job(runner_id, job_id, TERMINAL))["status"] == "completed"
    # status and health, answered by the agent itself
    status, view = await api.get(f"/runners/{runner_id}/status")
    assert status == 200 and view["status"] == "active", view
    status, health = await api.get(f"/runners/{runner_id}/health")
    assert status == 200 and health["checks"]["connectivity"]["status"] == "pass", health
    assert "disk_space" in health["checks"]
    # configuration
    status, body = await api.put(f"/runners/{runner_id}/config", {"max_concurrent_jobs": 3})
    assert status == 200, body
    status, config = await api.get(f"/runners/{runner_id}/config")
    assert status == 200 and config["configuration"]["max_concurrent_jobs"] == 3
    # control
    status, body = await api.post(f"/runners/{runner_id}/stop", {"graceful": False})
    assert status == 200 and body["status"] == "stopped", body
    await api.wait_runner_status(runner_id, "stopped")
    held = await submit_job(api, runner_id, "held", "true")
    status, body = await api.post(f"/runners/{runner_id}/start")
    assert status == 200, body
    assert (await api.wait_job(runner_id, held, TERMINAL))["status"] == "completed"
    # cancel a running job
    marker = process_marker()
    running = await submit_job(api, runner_id, "long", marker.sleep())
    await api.wait_job(runner_id, running, {"running"})
    status, body = await api.post(f"/runners/{runner_id}/jobs/{running}/cancel")
    assert status == 200, body
    assert (await api.wait_job(runner_id, running, TERMINAL))["status"] == "cancelled"
    await wait_for(lambda: _none_alive(marker), 10, what="the cancelled job's processes to end")


async def _none_alive(marker: ProcessMarker) -> bool:
    return not marker.alive()
