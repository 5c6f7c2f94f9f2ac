"""What a job means, on every executor: steps in order, environment, failures, working directories, timeouts,
retries and workspace cleanup. Through the public API only; see ``conftest.py`` for adding a backend."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tests.conftest import CoordinatorHandle
from tests.helpers import ProcessMarker, assert_error
from tests.semantics.conftest import ExecutorUnderTest

# A step's shell command that counts its runs in a file of the shared directory and prints the new count.
COUNT = 'n=$(( $(cat "$COUNTER" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$COUNTER"'


def _at(text: str | None) -> datetime:
    assert text, "timestamp missing"
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _steps(job: dict[str, Any]) -> list[tuple[str, int | None]]:
    return [(s["status"], s["exit_code"]) for s in job["steps"]]


def _attempts(job: dict[str, Any]) -> list[tuple[int, str, int | None]]:
    return [(a["attempt"], a["status"], a["exit_code"]) for a in job["attempts"]]


# --- steps and environment -------------------------------------------------------------------------------------


async def test_steps_run_in_order_in_one_workspace(executor: ExecutorUnderTest) -> None:
    runner = await executor.start()
    job = await runner.run(
        "ordered",
        "printf one > order",
        'test "$(cat order)" = one && printf two >> order',
        'test "$(cat order)" = onetwo',
    )
    assert job["status"] == "completed", job
    assert job["exit_code"] == 0
    assert _steps(job) == [("completed", 0)] * 3, job
    for before, after in zip(job["steps"], job["steps"][1:], strict=False):
        assert _at(before["completed_at"]) <= _at(after["started_at"]), job["steps"]


async def test_steps_see_the_job_environment_and_their_own_env_wins(executor: ExecutorUnderTest) -> None:
    runner = await executor.start()
    job = await runner.run(
        "environment",
        environment={"SHARED_NAME": "from-job", "ONLY_JOB": "j"},
        steps=[
            {
                "name": "with-env",
                "env": {"SHARED_NAME": "from-step", "ONLY_STEP": "s"},
                "run": 'test "$SHARED_NAME" = from-step || exit 11; test "$ONLY_JOB" = j || exit 12;'
                ' test "$ONLY_STEP" = s || exit 13; test "$CI" = true || exit 14',
            },
            {
                "name": "without-env",
                "run": 'test "$SHARED_NAME" = from-job || exit 21; test -z "${ONLY_STEP+set}" || exit 22',
            },
        ],
    )
    assert job["status"] == "completed", job
    assert _steps(job) == [("completed", 0), ("completed", 0)], job


async def test_a_failing_step_fails_the_job_with_its_exit_code_and_skips_the_rest(
    executor: ExecutorUnderTest,
) -> None:
    runner = await executor.start()
    ran = runner.shared / "third-step-ran"
    job = await runner.run("failing", "true", "exit 7", f'touch "{ran}"')
    assert job["status"] == "failed", job
    assert job["exit_code"] == 7
    assert job["reason"], job
    assert _steps(job) == [("completed", 0), ("failed", 7), ("skipped", None)], job
    assert not ran.exists(), "a step after the failing one ran"


async def test_continue_on_error_lets_the_job_go_on_and_complete(executor: ExecutorUnderTest) -> None:
    runner = await executor.start()
    job = await runner.run(
        "tolerant",
        steps=[
            {"name": "flaky", "run": "exit 3", "continue_on_error": True},
            {"name": "after", "run": "true"},
        ],
    )
    assert job["status"] == "completed", job
    assert job["exit_code"] == 0
    assert _steps(job) == [("failed", 3), ("completed", 0)], job


async def test_working_directory_is_created_inside_the_workspace(executor: ExecutorUnderTest) -> None:
    runner = await executor.start()
    job = await runner.run(
        "workdir",
        steps=[
            {"name": "top", "run": "touch at-top"},
            {
                "name": "inside",
                "working_directory": "sub/dir",
                "run": 'test "$(basename "$PWD")" = dir || exit 11;'
                ' test "$(basename "$(dirname "$PWD")")" = sub || exit 12;'
                " test -f ../../at-top || exit 13; touch made-here",
            },
            {"name": "back-at-top", "run": "test -f sub/dir/made-here"},
        ],
    )
    assert job["status"] == "completed", job
    assert _steps(job) == [("completed", 0)] * 3, job


async def test_a_working_directory_outside_the_workspace_is_refused(
    executor: ExecutorUnderTest, coordinator: CoordinatorHandle
) -> None:
    runner = await executor.start()
    for bad in ("..", "../elsewhere", "sub/../../elsewhere", "/etc"):
        status, body = await coordinator.api.post(
            f"/runners/{runner.runner_id}/jobs",
            {"name": "escape", "steps": [{"name": "s0", "run": "true", "working_directory": bad}]},
        )
        assert_error(status, body, 400, "INVALID_REQUEST", field="steps[0].working_directory")
    status, listed = await coordinator.api.get(f"/runners/{runner.runner_id}/jobs")
    assert status == 200 and listed["total_count"] == 0, listed


# --- timeouts --------------------------------------------------------------------------------------------------


async def test_job_timeout_ends_the_job_as_timed_out_and_leaves_no_process(
    executor: ExecutorUnderTest, process_marker: Any
) -> None:
    runner = await executor.start()
    marker: ProcessMarker = process_marker()
    started = runner.shared / "started"
    # Background, nohup'd and foreground processes; each records that it was launched.
    step = (
        f'{marker.sleep(1)} & echo bg >> "{started}"; nohup {marker.sleep(2)} >/dev/null 2>&1 &'
        f' echo nohup >> "{started}"; echo fg >> "{started}"; {marker.sleep(3)}'
    )
    job = await runner.run("slow", step, "true", timeout=1)
    assert job["status"] == "timed_out", job
    assert "timeout" in (job["reason"] or ""), job
    assert 1.0 <= job["duration"] < 4.0, job
    assert job["steps"][0]["status"] == "timed_out", job  # ended by the job's timeout, not cancelled
    assert job["steps"][1]["status"] == "skipped", job
    assert started.read_text().split() == ["bg", "nohup", "fg"]
    await marker.assert_gone()


async def test_step_timeout_times_the_step_out_and_continue_on_error_still_applies(
    executor: ExecutorUnderTest, process_marker: Any
) -> None:
    runner = await executor.start()
    marker: ProcessMarker = process_marker()
    job = await runner.run(
        "step-timeouts",
        steps=[
            {"name": "tolerated", "run": marker.background(), "timeout": 1, "continue_on_error": True},
            {"name": "fatal", "run": marker.sleep(4), "timeout": 1},
            {"name": "never", "run": "true"},
        ],
    )
    assert job["status"] == "timed_out", job
    assert "fatal" in (job["reason"] or ""), job
    assert _steps(job) == [("timed_out", None), ("timed_out", None), ("skipped", None)], job
    for step in job["steps"][:2]:
        assert 1.0 <= step["duration"] < 4.0, step
    await marker.assert_gone()


# --- retries ---------------------------------------------------------------------------------------------------


async def test_a_flaky_step_is_retried_and_completes_on_the_third_attempt(executor: ExecutorUnderTest) -> None:
    runner = await executor.start()
    counter = runner.shared / "count"
    job = await runner.run("flaky", f'{COUNT}; test "$n" -ge 3', environment={"COUNTER": str(counter)}, retry_count=2)
    assert job["status"] == "completed", job
    assert job["exit_code"] == 0
    assert job["attempt"] == 3, job
    assert job["retry_count"] == 2
    assert _attempts(job) == [(1, "failed", 1), (2, "failed", 1), (3, "completed", 0)], job
    for attempt in job["attempts"]:
        assert _at(attempt["started_at"]) <= _at(attempt["completed_at"]), attempt
        assert attempt["duration"] is not None and attempt["duration"] >= 0, attempt
    for before, after in zip(job["attempts"], job["attempts"][1:], strict=False):
        assert _at(before["completed_at"]) <= _at(after["started_at"]), job["attempts"]
    assert counter.read_text().strip() == "3", "the step ran a different number of times"
    # The job's steps are those of the attempt that counts: the last one.
    assert _steps(job) == [("completed", 0)], job


async def test_when_retries_run_out_the_job_fails_with_the_last_attempts_outcome(
    executor: ExecutorUnderTest,
) -> None:
    runner = await executor.start()
    counter = runner.shared / "count"
    job = await runner.run("hopeless", f"{COUNT}; exit 4", environment={"COUNTER": str(counter)}, retry_count=1)
    assert job["status"] == "failed", job
    assert job["exit_code"] == 4
    assert job["attempt"] == 2
    assert _attempts(job) == [(1, "failed", 4), (2, "failed", 4)], job
    assert counter.read_text().strip() == "2"


async def test_the_last_attempt_decides_the_status_even_when_it_times_out(
    executor: ExecutorUnderTest, process_marker: Any
) -> None:
    runner = await executor.start()
    marker: ProcessMarker = process_marker()
    counter = runner.shared / "count"
    job = await runner.run(
        "fails-then-hangs",
        steps=[{"name": "s0", "run": f'{COUNT}; if [ "$n" = 1 ]; then exit 5; fi; {marker.sleep(1)}', "timeout": 1}],
        environment={"COUNTER": str(counter)},
        retry_count=1,
    )
    assert job["status"] == "timed_out", job
    assert _attempts(job) == [(1, "failed", 5), (2, "timed_out", None)], job
    await marker.assert_gone()


async def test_each_attempt_starts_in_a_clean_workspace(executor: ExecutorUnderTest) -> None:
    # "never" keeps attempt 1's workspace on disk: attempt 2 must still not see its files.
    runner = await executor.start(cleanup_policy="never")
    counter = runner.shared / "count"
    job = await runner.run(
        "clean-retry",
        f'test -e leftover && exit 9; touch leftover; {COUNT}; test "$n" -ge 2',
        environment={"COUNTER": str(counter)},
        retry_count=1,
    )
    assert job["status"] == "completed", job
    assert _attempts(job) == [(1, "failed", 1), (2, "completed", 0)], job


# --- workspace cleanup -----------------------------------------------------------------------------------------


async def test_cleanup_policy_decides_whether_the_workspace_is_kept(executor: ExecutorUnderTest) -> None:
    runner = await executor.start()

    async def workspace_kept(policy: str, succeed: bool) -> bool:
        await runner.configure(cleanup_policy=policy)
        job = await runner.run(f"cleanup-{policy}", "touch artifact" + ("" if succeed else "; exit 1"))
        assert job["status"] == ("completed" if succeed else "failed"), job
        workspace = runner.workspaces / job["job_id"]
        kept = workspace.exists()
        if kept:
            assert list(workspace.rglob("artifact")), f"{workspace} kept without the job's files"
        return kept

    assert not await workspace_kept("always", succeed=True)
    assert runner.workspaces.is_dir()
    assert not await workspace_kept("always", succeed=False)
    assert not await workspace_kept("on_success", succeed=True)
    assert await workspace_kept("on_success", succeed=False)
    assert await workspace_kept("never", succeed=True)
