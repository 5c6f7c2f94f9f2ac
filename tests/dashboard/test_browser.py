"""The dashboard in a real headless Chromium, against a live coordinator and agent on 127.0.0.1.

Every wait is Playwright's ``expect`` with a timeout (or ``wait_for`` with a deadline); none is a sleep. A job
that must stay running while the browser watches waits on a gate file the test creates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.async_api import Page, expect

from coordinator import keys, tokens
from shared.models import MetricSample
from shared.timeutil import from_epoch
from tests.conftest import API_KEY, CoordinatorHandle, StartAgent
from tests.dashboard.conftest import Browser
from tests.helpers import wait_for

SECRET = "hunter2-very-secret-value"


def gated_job(gate: Path, name: str = "build-and-test") -> dict[str, Any]:
    """A job that prints, waits for ``gate`` to exist, prints again, and ends with a second step."""
    return {
        "name": name,
        "environment": {"SECRET": SECRET},
        "masked": ["SECRET"],
        "steps": [
            {
                "name": "build",
                "run": (
                    'echo "first line"; echo "warning on stderr" >&2; echo "the secret is $SECRET"; '
                    f'while [ ! -e "{gate}" ]; do sleep 0.05; done; echo "after the gate"'
                ),
            },
            {"name": "test", "run": 'echo "second step"'},
        ],
    }


async def runner_of(coordinator: CoordinatorHandle) -> dict[str, Any]:
    async def one() -> dict[str, Any] | None:
        _, body = await coordinator.api.get("/runners")
        runners = body["runners"]
        return runners[0] if runners and runners[0]["status"] == "active" else None

    return await wait_for(one, 15, what="the agent's runner to be active")


async def sign_in(page: Page, coordinator: CoordinatorHandle, credential: str) -> None:
    await page.goto(coordinator.url + "/")
    await page.fill("#credential", credential)
    await page.click("#sign-in")
    await expect(page.locator("#who")).not_to_be_empty()
    await expect(page.locator("#live.on")).to_be_visible()  # the WebSocket is open: no live event is missed


@dataclass
class Watched:
    page: Page
    runner_id: str
    job_id: str


async def watch_job(
    coordinator: CoordinatorHandle, start_agent: StartAgent, browser: Browser, job: dict[str, Any], credential: str
) -> Watched:
    """Starts an agent, submits ``job`` through the API, signs in with ``credential`` and opens the job's page."""
    await start_agent()
    runner = await runner_of(coordinator)
    status, submitted = await coordinator.api.post(f"/runners/{runner['id']}/jobs", job)
    assert status == 201, submitted
    page = await browser.new_page()
    await sign_in(page, coordinator, credential)
    await page.goto(f"{coordinator.url}/#/jobs/{runner['id']}/{submitted['job_id']}")
    return Watched(page, runner["id"], submitted["job_id"])


def assert_clean(browser: Browser, *secrets: str, refused: set[tuple[str, int]] | None = None) -> None:
    """No credential in any URL the browser asked for, no console error (a CSP violation is one), and no error
    answer but the expected ones (the page asks ``/api/whoami`` before anyone signed in)."""
    assert not browser.console_errors, browser.console_errors
    allowed = {("/api/whoami", 401)} | (refused or set())
    assert set(browser.failed) <= allowed, browser.failed
    assert_no_credential_in_urls(browser, *secrets)


def assert_no_credential_in_urls(browser: Browser, *secrets: str) -> None:
    assert browser.urls, "the browser made no requests?"
    for url in browser.urls:
        assert "token=" not in url and "api_key" not in url.lower(), url
        for secret in secrets:
            assert secret not in url, url


async def test_admin_signs_in_and_follows_a_job_live(
    coordinator: CoordinatorHandle, start_agent: StartAgent, browser: Browser, tmp_path: Path
) -> None:
    await start_agent()
    runner = await runner_of(coordinator)
    page = await browser.new_page()

    # The page and its files carry the security headers; the page itself needs no credential.
    response = await page.goto(coordinator.url + "/")
    assert response is not None and response.ok
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    await expect(page.locator("#credential")).to_have_attribute("type", "password")
    await browser.screenshot(page, "01-sign-in")

    # Sign in: the key becomes an HttpOnly, SameSite=Strict session cookie the page's script cannot read.
    await sign_in(page, coordinator, API_KEY)
    await expect(page.locator("#who")).to_have_text("key:admin (admin)")
    cookies = {c["name"]: c for c in await browser.context.cookies()}
    session = cookies["rustci_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict" and session["path"] == "/"
    assert await page.evaluate("document.cookie") == ""
    assert await page.evaluate("JSON.stringify({...sessionStorage, ...localStorage})") == "{}"

    # The local runner is listed with its heartbeat figures.
    row = page.locator(f'#runners tr[data-runner-id="{runner["id"]}"]')
    await expect(row).to_contain_text("test-runner")
    await expect(row.locator("td.status")).to_have_text("active")
    await expect(row).to_contain_text("native")
    await expect(row).to_contain_text("test")  # its tag
    await page.evaluate("window.notReloaded = true")

    # A runner's status change shows up live.
    status, _ = await coordinator.api.post(f"/runners/{runner['id']}/stop", {})
    assert status == 200
    await expect(row.locator("td.status")).to_have_text("stopped")
    status, _ = await coordinator.api.post(f"/runners/{runner['id']}/start")
    assert status == 200
    await expect(row.locator("td.status")).to_have_text("active")

    # A job submitted through the API appears without a reload.
    gate = tmp_path / "gate"
    status, submitted = await coordinator.api.post(f"/runners/{runner['id']}/jobs", gated_job(gate))
    assert status == 201, submitted
    job_row = page.locator(f'#jobs tr[data-job-id="{submitted["job_id"]}"]')
    await expect(job_row).to_be_visible()
    await expect(job_row.locator("td.status")).to_have_text("running")
    assert await page.evaluate("window.notReloaded") is True
    await browser.screenshot(page, "02-overview")

    # Its page shows the lines as they arrive, stderr marked, the secret masked as the API gives it.
    await job_row.locator("a.job-name").click()
    log = page.locator("#log")
    await expect(log).to_contain_text("first line")
    await expect(log.locator(".line.stderr")).to_contain_text("warning on stderr")
    await expect(log).to_contain_text("the secret is [MASKED]")
    await expect(page.locator("#job-status")).to_have_text("running")
    await expect(page.locator('#steps tr[data-step="build"] td.status')).to_have_text("running")
    await expect(page.locator("#cancel-job")).to_be_visible()  # the admin may cancel
    assert "after the gate" not in await log.inner_text()
    await browser.screenshot(page, "03-job-running")

    gate.touch()
    await expect(log).to_contain_text("after the gate")
    await expect(log).to_contain_text("second step")
    await expect(page.locator("#job-status")).to_have_text("completed")
    await expect(page.locator('#steps tr[data-step="test"] td.status')).to_have_text("completed")
    await expect(page.locator('#steps tr[data-step="build"] td.num').first).to_have_text("0")
    await expect(page.locator("#cancel-job")).to_have_count(0)
    assert SECRET not in await page.content()
    await browser.screenshot(page, "04-job-completed")

    # The runner's page: health checks, the 24-hour chart, and stop/start behind a confirmation.
    now = time.time()
    history = [
        MetricSample(
            at=from_epoch(now - hour * 3600), cpu_usage=20 + 3 * hour, memory_usage=40, disk_usage=10, active_jobs=0
        )
        for hour in range(1, 24)
    ]
    await coordinator.app[keys.METRICS_STORE].add_samples(runner["id"], history, now)  # type: ignore[index]
    await page.locator(f'a[href="#/runners/{runner["id"]}"]').first.click()
    await expect(page.locator('#health tr[data-check="connectivity"]')).to_contain_text("pass")
    cpu_line = page.locator('#metrics svg polyline[data-series="cpu_usage"]')
    await expect(cpu_line).to_have_count(1)
    assert len((await cpu_line.get_attribute("points") or "").split()) >= 20  # one point per hour with samples
    await expect(page.locator("#metrics")).to_contain_text("max 89.0 %")  # the busiest hour of the 24
    await expect(page.locator(f'#jobs tr[data-job-id="{submitted["job_id"]}"]')).to_contain_text("completed")
    await browser.screenshot(page, "05-runner")
    await page.click("button.control.stop")
    await expect(page.locator("#confirm")).to_be_visible()
    await page.click("#confirm button[value=keep]")  # changed its mind: nothing happens
    await expect(page.locator("#confirm")).to_be_hidden()
    await expect(page.locator("#runner-status")).to_have_text("active")
    await page.click("button.control.stop")
    await page.click("#confirm-ok")
    await expect(page.locator("#runner-status")).to_have_text("stopped")
    await page.click("button.control.start")
    await page.click("#confirm-ok")
    await expect(page.locator("#runner-status")).to_have_text("active")
    await page.click("button.control.restart")
    await expect(page.locator("#confirm-text")).to_contain_text("Restart runner test-runner?")
    await page.click("#confirm-ok")
    await expect(page.locator("#control-result")).to_contain_text("restart")
    await expect(page.locator("#runner-status")).to_have_text("active")
    await coordinator.api.wait_runner_status(runner["id"], "active")

    assert await page.evaluate("window.notReloaded") is True
    assert_clean(browser, API_KEY, session["value"])


async def test_admin_cancels_a_running_job_after_confirming(
    coordinator: CoordinatorHandle, start_agent: StartAgent, browser: Browser, tmp_path: Path
) -> None:
    watched = await watch_job(coordinator, start_agent, browser, gated_job(tmp_path / "never"), API_KEY)
    page = watched.page
    await expect(page.locator("#log")).to_contain_text("first line")
    await page.click("#cancel-job")
    await expect(page.locator("#confirm-text")).to_contain_text("Cancel job build-and-test?")
    await page.click("#confirm-ok")
    await expect(page.locator("#job-status")).to_have_text("cancelled")
    job = await coordinator.api.wait_job(watched.runner_id, watched.job_id, {"cancelled"})
    assert job["status"] == "cancelled"
    await browser.screenshot(page, "job-cancelled")
    assert_clean(browser, API_KEY)


async def test_viewer_sees_everything_but_no_write_action(
    coordinator: CoordinatorHandle, start_agent: StartAgent, browser: Browser, tmp_path: Path
) -> None:
    secret = (coordinator.config.state_dir / "jwt-secret").read_text().strip()
    viewer_token = tokens.issue(secret, "vera", "viewer", 600)
    gate = tmp_path / "gate"
    watched = await watch_job(coordinator, start_agent, browser, gated_job(gate), viewer_token)
    page = watched.page
    await expect(page.locator("#who")).to_have_text("user:vera (viewer)")
    await expect(page.locator("#log")).to_contain_text("first line")
    await expect(page.locator("#job-status")).to_have_text("running")
    await expect(page.locator("#cancel-job")).to_have_count(0)
    await browser.screenshot(page, "viewer-job")

    await page.goto(f"{coordinator.url}/#/runners/{watched.runner_id}")
    await expect(page.locator('#health tr[data-check="connectivity"]')).to_be_visible()
    await expect(page.locator("button.control")).to_have_count(0)
    await browser.screenshot(page, "viewer-runner")

    # The server says no as well: a change made with the viewer's session is refused.
    cancel = f"/api/runners/{watched.runner_id}/jobs/{watched.job_id}/cancel"
    refused = await page.evaluate(
        """async (path) => {
            const who = await (await fetch('/api/whoami')).json();
            const r = await fetch(path, {method: 'POST', headers: {'X-RustCI-CSRF': who.csrf_token}});
            return r.status;
        }""",
        cancel,
    )
    assert refused == 403
    gate.touch()
    await coordinator.api.wait_job(watched.runner_id, watched.job_id, {"completed"})
    assert_clean(browser, viewer_token, refused={(cancel, 403)})


async def test_wrong_credentials_are_refused_with_a_message(coordinator: CoordinatorHandle, browser: Browser) -> None:
    page = await browser.new_page()
    await page.goto(coordinator.url + "/")
    await page.fill("#credential", "rk_not-the-right-key-at-all")
    await page.click("#sign-in")
    await expect(page.locator("#signin-error")).to_contain_text("not valid")
    await expect(page.locator("#who")).to_be_empty()
    assert not [c for c in await browser.context.cookies() if c["name"] == "rustci_session"]
    await browser.screenshot(page, "sign-in-refused")
    assert_clean(browser, "rk_not-the-right-key-at-all", refused={("/api/session", 401)})


async def test_signing_out_ends_the_session(coordinator: CoordinatorHandle, browser: Browser) -> None:
    page = await browser.new_page()
    await sign_in(page, coordinator, API_KEY)
    await page.click("#sign-out")
    await expect(page.locator("#credential")).to_be_visible()
    await page.reload()
    await expect(page.locator("#credential")).to_be_visible()  # the cookie is gone, and so is the session
    assert len(coordinator.app[keys.DASHBOARD_SESSIONS]) == 0  # type: ignore[index]


def counting_job(gate: Path, before: int, after: int) -> dict[str, Any]:
    """Prints ``before 1..N``, waits for ``gate``, prints ``after 1..M``."""
    script = (
        f'for i in $(seq 1 {before}); do echo "before $i"; done; '
        f'while [ ! -e "{gate}" ]; do sleep 0.05; done; '
        f'for i in $(seq 1 {after}); do echo "after $i"; done'
    )
    return {"name": "counting", "steps": [{"name": "count", "run": script}]}


async def shown_lines(page: Page) -> list[str]:
    return await page.locator("#log .line .msg").all_inner_texts()


async def api_lines(coordinator: CoordinatorHandle, runner_id: str, job_id: str) -> list[str]:
    status, page = await coordinator.api.get(f"/runners/{runner_id}/logs?job_id={job_id}&limit=10000")
    assert status == 200 and not page["has_more"]
    return [entry["message"] for entry in page["logs"]]


async def test_log_resumes_after_a_dropped_stream_with_no_gap_and_no_repeat(
    coordinator: CoordinatorHandle, start_agent: StartAgent, browser: Browser, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    watched = await watch_job(coordinator, start_agent, browser, counting_job(gate, 20, 30), API_KEY)
    page, runner_id, job_id = watched.page, watched.runner_id, watched.job_id
    await expect(page.locator("#log")).to_contain_text("before 20")
    await expect(page.locator(".log-state")).to_have_text("following")

    # The server ends the stream under the page, as a dropped connection would (through the feed's own table:
    # the test reaches into it to pick the one stream to end).
    assert coordinator.app is not None
    feed = coordinator.app[keys.LOG_FEED]
    dropped = [follower for followers in feed._followers.values() for follower in followers]
    assert len(dropped) == 1
    dropped[0].close()
    await expect(page.locator("#log")).to_have_attribute("data-reconnects", "1")

    async def following_again() -> bool:
        return feed.follower_count == 1 and dropped[0] not in feed._followers.get(runner_id, ())

    await wait_for(following_again, 10, what="the page to follow the log again")

    gate.touch()
    await expect(page.locator("#log")).to_contain_text("after 30")
    await coordinator.api.wait_job(runner_id, job_id, {"completed"})
    expected = await api_lines(coordinator, runner_id, job_id)
    await expect(page.locator("#log .line")).to_have_count(len(expected))
    assert await shown_lines(page) == expected  # every line once, in order, across the reconnect
    assert [f"after {i}" for i in range(1, 31)] == [line for line in expected if line.startswith("after ")]
    assert_clean(browser, API_KEY)


async def test_a_long_log_keeps_a_bounded_dom_and_loads_earlier_lines(
    coordinator: CoordinatorHandle, start_agent: StartAgent, browser: Browser, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    watched = await watch_job(coordinator, start_agent, browser, counting_job(gate, 1, 2600), API_KEY)
    page, runner_id, job_id = watched.page, watched.runner_id, watched.job_id
    await expect(page.locator("#log")).to_contain_text("before 1")
    gate.touch()  # 2600 lines arrive while the page follows

    await expect(page.locator("#log")).to_contain_text("after 2600", timeout=30_000)
    await coordinator.api.wait_job(runner_id, job_id, {"completed"})
    expected = await api_lines(coordinator, runner_id, job_id)
    await expect(page.locator("#log .line")).to_have_count(2000)  # the oldest left the DOM
    assert await shown_lines(page) == expected[-2000:]
    await browser.screenshot(page, "job-long-log")

    load_earlier = page.locator("button.load-earlier")
    for _ in range(5):  # 500 lines a click
        if not await load_earlier.is_visible():
            break
        count = await page.locator("#log .line").count()
        await load_earlier.click()
        await expect(page.locator("#log .line")).not_to_have_count(count)
    await expect(load_earlier).to_be_hidden()
    assert await shown_lines(page) == expected
    assert_clean(browser, API_KEY)
