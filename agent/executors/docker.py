"""Docker executor: each job attempt runs in a container of its own, each step is an ``exec`` into it.

``setup`` starts the container from ``docker.image`` with a shell that only sleeps as its PID 1, the attempt's
workspace (a directory on this host, as for the native executor) bind-mounted at ``/workspace``, the labels
``rustci.job_id``, ``rustci.attempt`` and ``rustci.runner_id``, and ``docker_config`` and ``resource_limits``
applied. ``cleanup`` removes it with the workspace, so ``cleanup_policy`` keeps both or neither: a kept
container (idle, its steps' processes ended) is there to ``docker exec`` into after a failure, until removed by
hand or by ``recover``, which removes every container labelled with a job's id.

Ending a step: one container holds one attempt and its steps run one at a time, so every process in it except
PID 1 belongs to the running step, whatever session or process group it moved to. ``kill -1`` signals exactly
those (never PID 1, never the caller). A step's shell runs under a small wrapper that, once the shell exits,
SIGKILLs whatever it left behind and exits with its status; a cancelled step gets SIGTERM, then SIGKILL after
``kill_grace_period``, each from an ``exec`` of ``kill``.

The Docker SDK blocks: its calls run in worker threads, each over a client of its own that is closed after the
call, and a step's output is read by a thread of its own (it lasts as long as the step) and handed to the event
loop chunk by chunk. Docker's errors become :class:`ExecutorError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import requests
import structlog

from agent.config import AgentConfig
from agent.executors.base import (
    ExecutorDefaults,
    ExecutorError,
    JobContext,
    OutputSink,
    StepContext,
    Stream,
)
from agent.executors.lines import LineSplitter
from agent.executors.quantities import memory_bytes, nano_cpus
from agent.executors.scripts import write_step_script
from shared.models import CapabilityState, HealthCheck

log = structlog.get_logger(__name__)

T = TypeVar("T")

DEFAULT_HOST = "unix:///var/run/docker.sock"
API_TIMEOUT = 60.0  # one Docker API call (a pull is many reads, each bounded by this)
CHECK_TIMEOUT = 5.0
WORKSPACE = "/workspace"
LABEL_JOB, LABEL_ATTEMPT, LABEL_RUNNER = "rustci.job_id", "rustci.attempt", "rustci.runner_id"

# PID 1: sleeps until the container is removed; exits at once on SIGTERM (``docker stop``).
KEEPALIVE = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done"]
# A step: ``$1`` is its script file, ``$2`` its working directory. The step's shell is a child, so the wrapper is
# still there when it exits to end what it left running (``kill -1`` spares PID 1 and the wrapper itself).
STEP_WRAPPER = 'mkdir -p -- "$2" && cd -- "$2" || exit 1; sh "$1"; status=$?; kill -s KILL -1 2>/dev/null; exit $status'
# Variables the agent passes on from its own environment that describe this host, not the image: when a step
# would get the agent's own value, the image's (or Docker's) applies instead.
HOST_SPECIFIC = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "TMPDIR")
# Output chunks the reader thread may hand over before the step's log catches up (backpressure).
WINDOW = 16
# After SIGKILL, how long the step's output may stay open before it is abandoned.
PIPE_DRAIN_TIMEOUT = 2.0
# How long the engine's answer to a health check is reused (the status API may be asked often).
HEALTH_TTL = 5.0

Chunk = tuple[bytes | None, bytes | None]  # (stdout, stderr), as the SDK's demultiplexed stream yields them
STREAMS: tuple[Stream, Stream] = ("stdout", "stderr")


class DockerExecutor(ExecutorDefaults):
    name = "docker"
    runner_type = "docker"

    def __init__(self, config: AgentConfig) -> None:
        # The config object is the agent's own: image, limits and docker_config changed by SIGHUP or
        # PUT /config apply from the next job on.
        super().__init__(config)
        self._api_version: str | None = None  # negotiated with the engine once, then reused
        self._engine: tuple[float, str | None, str | None] = (-HEALTH_TTL, None, "not checked yet")
        self._engine_lock = asyncio.Lock()

    # --- the protocol ----------------------------------------------------------------------------------------

    async def check(self) -> None:
        """Raise ExecutorError unless the Docker engine answers."""
        await self._call(lambda client: client.ping(), timeout=CHECK_TIMEOUT)

    async def engine_version(self) -> tuple[str | None, str | None]:
        """``(version, None)`` when the engine answers, else ``(None, reason)``; reused for a few seconds, and
        concurrent callers share one question."""
        async with self._engine_lock:
            checked_at, version, error = self._engine
            if time.monotonic() - checked_at >= HEALTH_TTL:
                try:
                    answer = await self._call(lambda client: client.version(), timeout=CHECK_TIMEOUT)
                    version, error = str(answer.get("Version")), None
                except ExecutorError as e:
                    version, error = None, str(e)
                self._engine = (time.monotonic(), version, error)
            return version, error

    async def health(self) -> dict[str, HealthCheck]:
        version, error = await self.engine_version()
        check = HealthCheck(status="pass", version=version) if version else HealthCheck(status="fail", error=error)
        return {"docker_daemon": check}

    async def capabilities(self) -> dict[str, CapabilityState]:
        version, _ = await self.engine_version()
        return {"docker": "available" if version else "unavailable"}

    async def metadata(self) -> dict[str, str]:
        version, _ = await self.engine_version()
        return {"docker_version": version} if version else {}

    async def setup(self, job: JobContext) -> None:
        try:
            await asyncio.to_thread(_fresh_dir, job.workspace)
        except OSError as e:
            raise ExecutorError(f"cannot create workspace {job.workspace}: {e.strerror or e}") from e
        spec = self._container_spec(job)
        policy = self.config.docker.pull_policy
        abandoned = threading.Event()
        try:
            await self._call(lambda client: _start_container(client, spec, policy, abandoned))
        except asyncio.CancelledError:
            # The thread carries on; a container it makes from now on it removes itself (cleanup may run first).
            abandoned.set()
            raise

    async def run_step(self, job: JobContext, step: StepContext, output: OutputSink) -> int:
        container = _container_name(job)
        workdir = f"{WORKSPACE}/{step.spec.working_directory}" if step.spec.working_directory else WORKSPACE
        script = await write_step_script(job.workspace, step)
        command = ["sh", "-c", STEP_WRAPPER, "rustci-step", f"{WORKSPACE}/{script}", workdir]
        environment = _container_environment(step.environment)
        exec_id = await self._call(
            lambda client: client.api.exec_create(container, command, environment=environment, workdir=WORKSPACE)["Id"]
        )
        handoff = _Handoff(asyncio.get_running_loop())
        threading.Thread(
            target=self._read_output, args=(exec_id, handoff), name=f"docker-output:{exec_id[:12]}", daemon=True
        ).start()
        pump = asyncio.create_task(self._pump(handoff, output), name="docker:step-output")
        try:
            await asyncio.wait([pump])
        except asyncio.CancelledError:
            await asyncio.shield(self._terminate(container, handoff, pump))
            raise
        if pump.exception() is not None:
            handoff.abort()  # the reader thread may be waiting for room: let it go
        pump.result()
        if handoff.error is not None:
            raise handoff.error
        return await self._call(lambda client: _exit_code(client, exec_id))

    async def cleanup(self, job: JobContext) -> None:
        try:
            await self._call(lambda client: _remove(client, [_container_name(job)]))
        finally:
            await asyncio.to_thread(shutil.rmtree, job.workspace, True)

    async def recover(self, job_id: str) -> int:
        """Remove every container of the job (left by an agent that crashed while running it)."""
        return await self._call(lambda client: _remove(client, _labelled(client, {LABEL_JOB: job_id})))

    # --- steps -----------------------------------------------------------------------------------------------

    def _read_output(self, exec_id: str, handoff: _Handoff) -> None:
        """The reader thread: the exec's output stream, chunk by chunk, until the last holder of it ends."""
        try:
            with self._client(API_TIMEOUT) as client:
                stream = client.api.exec_start(exec_id, stream=True, demux=True)
                handoff.attach(stream)
                for chunk in stream:
                    if not handoff.put(chunk):
                        break
        except Exception as e:  # handed to the step (a thread's exception would only be printed)
            handoff.error = _wrap(e, "step output")
            handoff.error.__cause__ = e
        finally:
            handoff.finish()

    async def _pump(self, handoff: _Handoff, output: OutputSink) -> None:
        splitters = {stream: LineSplitter(self.max_line) for stream in STREAMS}
        while (chunk := await handoff.get()) is not None:
            for stream, data in zip(STREAMS, chunk, strict=True):
                if data:
                    for line in splitters[stream].feed(data):
                        output(stream, line)
            await output.drain()  # backpressure: the reader thread waits while the log pipeline is far behind
        for stream, splitter in splitters.items():
            for line in splitter.flush():
                output(stream, line)

    async def _terminate(self, container: str, handoff: _Handoff, pump: asyncio.Task[None]) -> None:
        """SIGTERM to every process of the step, SIGKILL after the grace period (or once its output closed)."""
        await self._signal_all(container, "TERM")
        await asyncio.wait([pump], timeout=self.kill_grace_period)
        await self._signal_all(container, "KILL")  # also for what ignored SIGTERM without holding the output
        await asyncio.wait([pump], timeout=PIPE_DRAIN_TIMEOUT)
        if not pump.done():
            log.warning("step output still open after SIGKILL; abandoning it", container=container)
            handoff.abort()
            await asyncio.wait([pump], timeout=PIPE_DRAIN_TIMEOUT)
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        if not pump.cancelled() and pump.exception() is not None:  # retrieved: the step ends as cancelled anyway
            log.warning("step output failed while the step was cancelled", error=repr(pump.exception()))

    async def _signal_all(self, container: str, signal: str) -> None:
        def send(client: docker.DockerClient) -> None:
            exec_id = client.api.exec_create(container, ["kill", "-s", signal, "-1"])["Id"]
            client.api.exec_start(exec_id, detach=True)  # don't wait on it: a trap may take its time

        try:
            await self._call(send)
        except ExecutorError as e:  # the container is gone, or the engine: nothing left to signal there
            log.warning("could not signal the step's processes", container=container, signal=signal, error=str(e))

    # --- the container ---------------------------------------------------------------------------------------

    def _container_spec(self, job: JobContext) -> dict[str, Any]:
        """Keyword arguments of ``containers.create`` for the job's attempt."""
        docker_config, limits = self.config.docker_config, self.config.resource_limits
        spec: dict[str, Any] = {
            "image": job.image or self.config.docker.image,
            "name": _container_name(job),
            "entrypoint": KEEPALIVE,
            "command": [],
            "labels": {LABEL_JOB: job.job_id, LABEL_ATTEMPT: str(job.attempt), LABEL_RUNNER: job.runner_id},
            "working_dir": WORKSPACE,
            "network_mode": docker_config.network_mode,
            "privileged": docker_config.privileged,
            "volumes": [f"{job.workspace.resolve()}:{WORKSPACE}:rw", *docker_config.volumes],
        }
        if limits.cpu_limit:
            spec["nano_cpus"] = nano_cpus(limits.cpu_limit)
        if limits.memory_limit:
            spec["mem_limit"] = memory_bytes(limits.memory_limit)
        return spec

    # --- talking to the engine -------------------------------------------------------------------------------

    async def _call(self, work: Callable[[docker.DockerClient], T], timeout: float = API_TIMEOUT) -> T:
        """``work(client)`` in a worker thread; Docker's errors come out as ExecutorError."""

        def run() -> T:
            try:
                with self._client(timeout) as client:
                    return work(client)
            except ExecutorError:
                raise
            except Exception as e:
                raise _wrap(e, "Docker") from e

        return await asyncio.to_thread(run)

    @contextlib.contextmanager
    def _client(self, timeout: float) -> Iterator[Any]:
        host = os.environ.get("DOCKER_HOST") or DEFAULT_HOST
        if host.startswith("unix://"):
            # The SDK would fail as well, but leave its socket open doing so.
            problem = _unix_socket_problem(host[len("unix://") :])
            if problem:
                raise ExecutorError(f"Docker engine not reachable at {host}: {problem}")
        try:
            client = docker.from_env(version=self._api_version or "auto", timeout=timeout)
        except docker.errors.DockerException as e:
            raise ExecutorError(f"Docker engine not reachable at {host}: {e}") from e
        self._api_version = client.api.api_version
        try:
            yield client
        finally:
            client.close()


class _Handoff:
    """A step's output from its reader thread to the event loop, at most WINDOW chunks ahead of the log: a step
    writing faster than its log is written then waits in its pipe, as on the native executor."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.error: ExecutorError | None = None
        self._loop = loop
        self._queue: asyncio.Queue[Chunk | None] = asyncio.Queue()
        self._credits = threading.Semaphore(WINDOW)
        self._lock = threading.Lock()
        self._stream: Any = None
        self._closed = False

    # reader thread
    def attach(self, stream: Any) -> None:
        with self._lock:
            self._stream = stream
            closed = self._closed
        if closed:
            _shut(stream)

    def put(self, chunk: Chunk) -> bool:
        self._credits.acquire()
        if self._closed:
            return False
        self._loop.call_soon_threadsafe(self._queue.put_nowait, chunk)
        return True

    def finish(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            _shut(stream)
            # The stream's HTTP response holds the socket too: without this its file descriptor stays open.
            response = getattr(stream, "_response", None)
            if response is not None:
                with contextlib.suppress(OSError):
                    response.close()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(self._queue.put_nowait, None)

    # event loop
    async def get(self) -> Chunk | None:
        chunk = await self._queue.get()
        self._credits.release()
        return chunk

    def abort(self) -> None:
        """Stop reading: the reader thread wakes up (in its read or waiting for room), ends and cleans up."""
        with self._lock:
            self._closed = True
            stream = self._stream
        self._credits.release()
        if stream is not None:
            _shut(stream)


def _shut(stream: Any) -> None:
    """Shut the stream's socket down: a read blocked on it in another thread returns."""
    with contextlib.suppress(OSError):
        stream.close()


# --- blocking helpers (run in worker threads) ------------------------------------------------------------------


def _start_container(
    client: docker.DockerClient, spec: dict[str, Any], pull_policy: str, abandoned: threading.Event
) -> None:
    _ensure_image(client, spec["image"], pull_policy)
    if abandoned.is_set():
        return
    container = client.containers.create(**spec)
    try:
        container.start()
    except Exception:
        _remove(client, [container.id])
        raise
    if abandoned.is_set():
        _remove(client, [container.id])


def _ensure_image(client: docker.DockerClient, image: str, pull_policy: str) -> None:
    try:
        client.images.get(image)
        return
    except docker.errors.ImageNotFound as e:
        if pull_policy == "never":
            raise ExecutorError(f"image {image} is not on this Docker host and docker.pull_policy is never") from e
    try:
        client.images.pull(image)
    except docker.errors.DockerException as e:
        raise ExecutorError(f"cannot pull image {image}: {_explain(e)}") from e


def _labelled(client: docker.DockerClient, labels: dict[str, str]) -> list[str]:
    found = client.api.containers(all=True, filters={"label": [f"{k}={v}" for k, v in labels.items()]})
    return [str(container["Id"]) for container in found]


def _remove(client: docker.DockerClient, containers: list[str]) -> int:
    """Force-remove (SIGKILL first) each container that still exists; how many were removed."""
    removed = 0
    for container in containers:
        try:
            client.api.remove_container(container, force=True, v=True)
            removed += 1
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if e.status_code != 409:  # 409: its removal is already in progress
                raise
    return removed


def _exit_code(client: docker.DockerClient, exec_id: str) -> int:
    # The output stream closes as the step's wrapper exits; the engine may take a moment to record it.
    deadline = time.monotonic() + 5.0
    while True:
        state = client.api.exec_inspect(exec_id)
        if not state["Running"] and state["ExitCode"] is not None:
            return int(state["ExitCode"])
        if time.monotonic() > deadline:
            raise ExecutorError("the step's output ended but Docker does not report its exit code")
        time.sleep(0.01)


def _container_name(job: JobContext) -> str:
    return f"rustci-{job.job_id}-{job.attempt}"


def _container_environment(environment: dict[str, str]) -> list[str]:
    return [
        f"{name}={value}"
        for name, value in environment.items()
        if not (name in HOST_SPECIFIC and os.environ.get(name) == value)
    ]


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)


def _unix_socket_problem(path: str) -> str | None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CHECK_TIMEOUT)
        try:
            sock.connect(path)
        except OSError as e:
            return e.strerror or str(e)
    return None


def _explain(error: Exception) -> str:
    explanation = getattr(error, "explanation", None)
    return str(explanation or error)


def _wrap(error: Exception, what: str) -> ExecutorError:
    if isinstance(error, ExecutorError):
        return error
    if isinstance(error, requests.exceptions.ConnectionError):
        return ExecutorError(f"Docker engine not reachable: {error}")
    if isinstance(error, docker.errors.DockerException | requests.exceptions.RequestException):
        return ExecutorError(f"{what}: {_explain(error)}")
    return ExecutorError(f"{what}: unexpected {type(error).__name__}: {error}")
