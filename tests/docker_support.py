"""Docker for tests: is an engine there, the test image, and removing what a test's jobs left.

- :func:`require_docker` skips the calling test when no Docker engine answers, or fails it when the environment
  says one must be there (``RUSTCI_REQUIRE_DOCKER=1``, as ``.ci/run`` sets).
- :func:`busybox_image` is ``rustci-busybox:test``, built once per session with ``docker import`` from this host's
  static busybox (no registry is needed or reachable), unless the engine already has this revision of it.
- :func:`remove_containers` removes containers by label, for teardown (jobs' containers carry ``rustci.*`` labels).

The Docker SDK blocks: async tests call these through ``asyncio.to_thread`` while an agent runs in the same loop.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import socket
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

IMAGE = "rustci-busybox:test"
# Bumped whenever the image's contents change: an engine holding an older build gets the new one.
IMAGE_REVISION = "2"
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: statically linked, runs in an empty rootfs
# POSIX tools this busybox build lacks, as scripts (steps of the job-semantics suite use them).
EXTRA_TOOLS = {"nohup": b"#!/bin/sh\ntrap '' HUP\nexec \"$@\"\n"}


@contextlib.contextmanager
def client() -> Iterator[Any]:
    """A Docker client for one piece of work (closed after it, so no socket outlives the test)."""
    c = docker.from_env(timeout=30)
    try:
        yield c
    finally:
        c.close()


def docker_problem() -> str | None:
    """Why the tests cannot use Docker here, or None when they can."""
    if not BUSYBOX.is_file():
        return f"{BUSYBOX} is missing (Debian package busybox-static) to build the test image"
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if host.startswith("unix://"):
        # Probed first: the SDK, failing to connect to a unix socket, leaves its socket open.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(5)
            try:
                probe.connect(host[len("unix://") :])
            except OSError as e:
                return f"{host}: {e.strerror or e}"
    try:
        with client() as c:
            c.ping()
    except Exception as e:
        return f"{host}: {e}"
    return None


@functools.cache
def _docker_problem_once() -> str | None:
    return docker_problem()


def require_docker() -> None:
    """Skip the test without a Docker engine; fail it instead when ``RUSTCI_REQUIRE_DOCKER=1``."""
    problem = _docker_problem_once()
    if problem is None:
        return
    if os.environ.get("RUSTCI_REQUIRE_DOCKER") == "1":
        pytest.fail(f"Docker engine not reachable: {problem} (RUSTCI_REQUIRE_DOCKER=1)")
    pytest.skip(f"Docker engine not reachable: {problem}")


@functools.cache
def busybox_image() -> str:
    """The busybox test image (after :func:`require_docker`): imported now unless the engine has this revision."""
    with client() as c:
        try:
            if c.images.get(IMAGE).labels.get("rustci.test-image") == IMAGE_REVISION:
                return IMAGE
        except docker.errors.ImageNotFound:
            pass
        c.api.import_image_from_data(
            _rootfs(),
            repository=IMAGE.split(":")[0],
            tag=IMAGE.split(":")[1],
            changes=["ENV PATH=/bin", 'CMD ["sh"]', f"LABEL rustci.test-image={IMAGE_REVISION}"],
        )
        # The import answers with a status document, not always an error: check what the engine now has.
        assert c.images.get(IMAGE).labels.get("rustci.test-image") == IMAGE_REVISION, f"{IMAGE} was not imported"
    return IMAGE


def _rootfs() -> bytes:
    """A tar of a root filesystem: busybox and its applets in /bin, root and nobody users, /tmp mode 1777."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add(name: str, kind: bytes = tarfile.DIRTYPE, mode: int = 0o755, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname, info.size = kind, mode, link, len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for directory in ("bin", "etc", "proc", "sys", "dev", "root"):
            add(directory)
        add("tmp", mode=0o1777)  # the engine keeps the image's mode for /tmp, even for a tmpfs there
        add("bin/busybox", tarfile.REGTYPE, data=BUSYBOX.read_bytes())
        applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
        for applet in applets:
            if applet != "busybox":
                add(f"bin/{applet}", tarfile.SYMTYPE, link="busybox")
        for tool, script in EXTRA_TOOLS.items():
            if tool not in applets:
                add(f"bin/{tool}", tarfile.REGTYPE, data=script)
        users = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
        add("etc/passwd", tarfile.REGTYPE, 0o644, users)
        add("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\nnogroup:x:65534:\n")
    return buffer.getvalue()


def containers(**labels: str) -> list[dict[str, Any]]:
    """Containers (running or not) carrying all of ``labels``, as the engine lists them."""
    with client() as c:
        found: list[dict[str, Any]] = c.api.containers(
            all=True, filters={"label": [f"{k}={v}" for k, v in labels.items()]}
        )
    return found


def remove_containers(**labels: str) -> int:
    """Force-remove the containers carrying all of ``labels`` (teardown hygiene); how many there were."""
    found = containers(**labels)
    with client() as c:
        for container in found:
            with contextlib.suppress(docker.errors.NotFound):
                c.api.remove_container(container["Id"], force=True, v=True)
    return len(found)
