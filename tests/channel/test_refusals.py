"""Why a channel was refused decides what the agent does: register anew only if its runner is unknown."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from agent import identity as identity_store
from agent.daemon import Agent
from agent.identity import Identity
from tests.conftest import CoordinatorHandle, agent_config
from tests.helpers import register_runner, wait_for


async def test_a_coordinator_without_the_channel_route_never_makes_the_agent_forget_its_runner(
    tmp_path: Path,
) -> None:
    handshakes = 0

    async def nothing_here(request: web.Request) -> web.Response:
        nonlocal handshakes
        handshakes += 1
        return web.json_response({"error": "no such route"}, status=404)

    app = web.Application()
    app.router.add_get("/api/runners/{runner_id}/channel", nothing_here)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}"
    kept = Identity("runner_kept", "reg_token_kept", url)
    identity_store.save(tmp_path / "agent", kept)
    agent = Agent(agent_config(tmp_path / "agent", url))
    try:
        await agent.start()
        await wait_for(lambda: _at_least(handshakes, 6), 15, what="the agent to retry the channel")
        assert agent.identity() == kept and identity_store.load(tmp_path / "agent") == kept
        assert not agent.channel.connected.is_set()
    finally:
        await agent.stop(timeout=1)
        await runner.cleanup()


async def test_an_unknown_runner_makes_the_agent_register_anew(coordinator: CoordinatorHandle, tmp_path: Path) -> None:
    gone = await register_runner(coordinator.api)
    await coordinator.api.delete(f"/runners/{gone['runner_id']}")
    identity_store.save(tmp_path / "agent", Identity(gone["runner_id"], gone["registration_token"], coordinator.url))
    agent = Agent(agent_config(tmp_path / "agent", coordinator.url))
    try:
        await agent.start()
        await wait_for(lambda: _true(agent.channel.connected.is_set()), 15, what="the new runner's channel")
        assert agent.identity().runner_id != gone["runner_id"]
    finally:
        await agent.stop(timeout=1)


async def _at_least(value: int, minimum: int) -> bool:
    return value >= minimum


async def _true(value: bool) -> bool:
    return value
