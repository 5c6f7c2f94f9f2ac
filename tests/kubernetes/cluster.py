"""An emulated Kubernetes cluster for tests: kmock's ``KubernetesEmulator`` as the API server, and a kubelet.

**This is emulation, not Kubernetes.** The API server is kmock's in-memory emulator served over real HTTP on
127.0.0.1, reached through a kubeconfig file like any cluster; the executor under test cannot tell. kmock keeps
objects, serves list/watch/create/patch/delete; it does not evaluate label or field selectors (clients filter
what they get) and has no ``/version/`` nor pod ``log`` subresource: :class:`EmulatedCluster` adds both as
reactions.

:class:`Kubelet` plays the node. It watches the pods created in the emulator (over HTTP) and runs each one's
single container as a local subprocess:

- volumes are host directories: a ConfigMap volume is its data written to a temporary directory, an ``emptyDir``
  a fresh temporary directory, a ``hostPath`` the path itself; the container's command, environment and working
  directory have each ``mountPath`` prefix replaced by its directory (there is no mount namespace);
- the container's environment is its ``env`` list plus a default ``PATH`` (the image's, so to speak);
- stdout and stderr go to one log, each line stamped with an RFC 3339 timestamp, served by the ``log``
  subresource with ``follow``, ``timestamps`` and ``sinceSeconds``;
- status goes back through the API: ``Running`` with a running container state when started, then
  ``Succeeded``/``Failed`` with the container's ``terminated.exitCode``; ``activeDeadlineSeconds`` ends the pod
  with reason ``DeadlineExceeded``;
- a deleted pod's processes get SIGTERM, then SIGKILL after ``terminationGracePeriodSeconds``; they are found by
  an environment variable the kubelet gives the container's processes (as a container's cgroup would hold them).

:meth:`Kubelet.break_log_streams` ends every open log stream early (the container keeps running), for tests of a
client that must reopen where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import psutil
import yaml

POD_MARKER = "KUBELET_EMULATION_POD_UID"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SERVER_VERSION = {
    "major": "1",
    "minor": "30",
    "gitVersion": "v1.30.0-kmock",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-01-01T00:00:00Z",
    "goVersion": "go1.22",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def _stamp(at: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if at is None else at, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}000Z"


def _container_status(container: dict[str, Any], state: dict[str, Any], ready: bool = False) -> dict[str, Any]:
    return {
        "name": container["name"],
        "image": container.get("image", ""),
        "imageID": "emulated://" + container.get("image", ""),
        "ready": ready,
        "restartCount": 0,
        "state": state,
    }


@dataclass
class PodRun:
    namespace: str
    name: str
    uid: str
    spec: dict[str, Any]
    dirs: list[Path] = field(default_factory=list)
    lines: list[tuple[float, bytes]] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    process: asyncio.subprocess.Process | None = None
    exited: bool = False
    deleted: bool = False
    deadline_exceeded: bool = False
    task: asyncio.Task[None] | None = None


class Kubelet:
    def __init__(self, url: str, root: Path) -> None:
        self.url = url
        self.root = root
        self.pods: dict[tuple[str, str], PodRun] = {}
        self.log_requests: list[dict[str, str]] = []
        self.started: list[str] = []  # names of the pods this kubelet ran, in order
        self._runs: list[PodRun] = []  # every pod it ran, deleted ones too (all are waited for at close)
        self.deleted: list[str] = []  # names of the pods it saw deleted
        self._streams: set[asyncio.Event] = set()
        self._session: aiohttp.ClientSession | None = None
        self._watch: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(self.url)
        self._watch = asyncio.create_task(self._watch_pods(), name="kubelet:watch")

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for run in self._runs:
            await self._kill(run, grace=0)
            if run.task is not None:
                # Its processes are killed: let it see them exit (a subprocess transport left open warns later).
                with contextlib.suppress(TimeoutError, Exception):
                    await asyncio.wait_for(asyncio.shield(run.task), 10)
                run.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await run.task
            if run.process is not None and run.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    run.process.kill()
                await run.process.wait()
            for d in run.dirs:
                shutil.rmtree(d, ignore_errors=True)
        if self._session is not None:
            await self._session.close()

    async def break_log_streams(self) -> int:
        """End every open log stream now; returns how many there were."""
        count = len(self._streams)
        for stop in list(self._streams):
            stop.set()
        for run in list(self.pods.values()):
            async with run.changed:
                run.changed.notify_all()
        return count

    # --- the pods --------------------------------------------------------------------------------------------------

    async def _watch_pods(self) -> None:
        assert self._session is not None
        while True:
            async with self._session.get("/api/v1/pods", params={"watch": "true"}, timeout=None) as response:
                async for raw in response.content:
                    if not raw.strip():
                        continue
                    event = json.loads(raw)
                    obj = event.get("object") or {}
                    meta = obj.get("metadata") or {}
                    key = (meta.get("namespace") or "default", meta.get("name"))
                    if event.get("type") == "ADDED" and key not in self.pods:
                        run = PodRun(
                            key[0], key[1], meta.get("uid") or f"{key[0]}-{key[1]}-{time.time_ns()}", obj["spec"]
                        )
                        self.pods[key] = run
                        self._runs.append(run)
                        self.started.append(key[1])
                        run.task = asyncio.create_task(self._run(run), name=f"kubelet:{key[1]}")
                    elif event.get("type") == "DELETED" and key in self.pods:
                        run = self.pods.pop(key)
                        self.deleted.append(key[1])
                        run.deleted = True
                        grace = int(run.spec.get("terminationGracePeriodSeconds", 30))
                        asyncio.create_task(self._kill(run, grace), name=f"kubelet:kill:{key[1]}")  # noqa: RUF006

    async def _patch_status(self, run: PodRun, status: dict[str, Any]) -> None:
        if run.deleted:
            return
        assert self._session is not None
        async with self._session.patch(
            f"/api/v1/namespaces/{run.namespace}/pods/{run.name}/status",
            json={"status": status},
            headers={"Content-Type": "application/merge-patch+json"},
        ) as response:
            await response.read()

    async def _volume_dirs(self, run: PodRun) -> dict[str, Path]:
        """Each volume's host directory."""
        assert self._session is not None
        dirs: dict[str, Path] = {}
        for volume in run.spec.get("volumes") or []:
            if "hostPath" in volume:
                dirs[volume["name"]] = Path(volume["hostPath"]["path"])
                continue
            made = Path(tempfile.mkdtemp(prefix=f"{run.name}-{volume['name']}-", dir=self.root))
            run.dirs.append(made)
            if "configMap" in volume:
                name = volume["configMap"]["name"]
                async with self._session.get(f"/api/v1/namespaces/{run.namespace}/configmaps/{name}") as response:
                    data = (await response.json()).get("data") or {}
                for key, text in data.items():
                    (made / key).write_text(text)
                    (made / key).chmod(volume["configMap"].get("defaultMode", 0o644))
            dirs[volume["name"]] = made
        return dirs

    async def _run(self, run: PodRun) -> None:
        container = run.spec["containers"][0]
        dirs = await self._volume_dirs(run)
        mounts = sorted(
            ((m["mountPath"], dirs[m["name"]]) for m in container.get("volumeMounts") or []),
            key=lambda pair: -len(pair[0]),
        )

        def host(text: str) -> str:
            for path, directory in mounts:
                if text == path or text.startswith(path + "/"):
                    return str(directory) + text[len(path) :]
            return text

        command = [host(part) for part in [*container.get("command", []), *container.get("args", [])]]
        env = {"PATH": DEFAULT_PATH, POD_MARKER: run.uid}
        env.update({e["name"]: host(e.get("value", "")) for e in container.get("env") or []})
        cwd = host(container.get("workingDir") or "/")
        run.process = await asyncio.create_subprocess_exec(
            *command,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        started = _stamp()
        await self._patch_status(
            run,
            {
                "phase": "Running",
                "startTime": started,
                "containerStatuses": [_container_status(container, {"running": {"startedAt": started}}, ready=True)],
            },
        )
        deadline = run.spec.get("activeDeadlineSeconds")
        timer = asyncio.get_running_loop().call_later(deadline, self._deadline, run) if deadline else None
        assert run.process.stdout is not None
        while line := await run.process.stdout.readline():
            async with run.changed:
                run.lines.append((time.time(), line))
                run.changed.notify_all()
        code = await run.process.wait()
        if timer is not None:
            timer.cancel()
        async with run.changed:
            run.exited = True
            run.changed.notify_all()
        exit_code = code if code >= 0 else 128 - code
        status: dict[str, Any] = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [
                _container_status(container, {"terminated": {"exitCode": exit_code, "finishedAt": _stamp()}})
            ],
        }
        if run.deadline_exceeded:
            status.update(phase="Failed", reason="DeadlineExceeded", message="Pod was active longer than allowed")
        await self._patch_status(run, status)

    def _deadline(self, run: PodRun) -> None:
        run.deadline_exceeded = True
        asyncio.create_task(self._kill(run, int(run.spec.get("terminationGracePeriodSeconds", 30))))  # noqa: RUF006

    def processes(self, run: PodRun) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.environ().get(POD_MARKER) == run.uid:
                    found.append(proc)
        return found

    async def _kill(self, run: PodRun, grace: int) -> None:
        """End the container's processes: SIGTERM, then SIGKILL after ``grace`` seconds; open log streams end."""
        victims = await asyncio.to_thread(self.processes, run)
        for proc in victims:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGTERM)
        if grace and run.process is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.process.wait(), grace)
        for proc in await asyncio.to_thread(self.processes, run):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        async with run.changed:
            run.exited = run.exited or run.deleted
            run.changed.notify_all()

    # --- the log subresource -------------------------------------------------------------------------------------

    async def serve_log(self, request: kmock.Request) -> Any:
        params = dict(request.params)
        self.log_requests.append({"pod": request.name or "", **params})
        run = self.pods.get((request.namespace or "default", request.name or ""))
        if run is None:
            raise kmock.KubernetesNotFoundError()
        follow = params.get("follow") == "true"
        stamps = params.get("timestamps") == "true"
        since = float(params["sinceSeconds"]) if "sinceSeconds" in params else None
        cutoff = time.time() - since if since is not None else 0.0
        stop = asyncio.Event()
        self._streams.add(stop)
        return self._log_lines(run, follow, stamps, cutoff, stop)

    async def _log_lines(
        self, run: PodRun, follow: bool, stamps: bool, cutoff: float, stop: asyncio.Event
    ) -> AsyncIterator[bytes]:
        sent = 0
        try:
            while True:
                async with run.changed:
                    if sent >= len(run.lines) and follow and not run.exited and not stop.is_set():
                        await run.changed.wait()  # a new line, the container's end, or a broken stream
                    fresh = run.lines[sent:]
                    sent = len(run.lines)
                    ended = run.exited or not follow
                chunk = b"".join(
                    (f"{_stamp(at)} ".encode() if stamps else b"") + line for at, line in fresh if at >= cutoff
                )
                if chunk:
                    yield chunk
                if stop.is_set() or (ended and sent >= len(run.lines)):
                    return
        finally:
            self._streams.discard(stop)


class EmulatedCluster:
    """The emulator, its HTTP server, a kubeconfig pointing at it, and the kubelet."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.emulator = kmock.KubernetesEmulator()
        self.server = kmock.Server(self.emulator)
        self.kubeconfig = root / "kubeconfig.yaml"
        self.kubelet: Kubelet

    async def __aenter__(self) -> EmulatedCluster:
        await self.emulator.__aenter__()
        await self.server.__aenter__()
        url = str(self.server.url).rstrip("/")
        self.kubelet = Kubelet(url, self.root)
        for plural in ("pods", "configmaps"):  # known before any exists (listing an empty kind is not a 404)
            self.emulator.resources[f"v1/{plural}"] = {"namespaced": True}
        self.emulator["get /version/"] << SERVER_VERSION
        self.emulator[kmock.subresource("log")] << self.kubelet.serve_log
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "emulated", "cluster": {"server": url}}],
                    "users": [{"name": "tester", "user": {"token": "emulated-token"}}],
                    "contexts": [{"name": "emulated", "context": {"cluster": "emulated", "user": "tester"}}],
                    "current-context": "emulated",
                }
            )
        )
        await self.kubelet.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kubelet.close()
        await self.server.__aexit__(None, None, None)
        await self.emulator.__aexit__(None, None, None)

    def pods(self, namespace: str = "default") -> list[dict[str, Any]]:
        """The live pods the emulator holds."""
        found = []
        for key, obj in list(self.emulator.objects.items()):
            resource, ns, _ = key
            if getattr(resource, "plural", None) == "pods" and ns == namespace and not obj.deleted:
                found.append(obj.raw)
        return found

    async def create(self, plural: str, body: dict[str, Any], namespace: str = "default") -> None:
        """Create an object through the API, as any client would."""
        async with aiohttp.ClientSession(self.kubelet.url) as session:
            async with session.post(f"/api/v1/namespaces/{namespace}/{plural}", json=body) as response:
                assert response.status in (200, 201), await response.text()

    def configmaps(self, namespace: str = "default") -> list[dict[str, Any]]:
        found = []
        for key, obj in list(self.emulator.objects.items()):
            resource, ns, _ = key
            if getattr(resource, "plural", None) == "configmaps" and ns == namespace and not obj.deleted:
                found.append(obj.raw)
        return found

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """Agent settings for a kubernetes runner on this cluster."""
        kubernetes = {"kubeconfig": str(self.kubeconfig), "image": "busybox:emulated", **overrides}
        return {"runner": {"type": "kubernetes", "capabilities": ["shell"]}, "kubernetes": kubernetes}
