"""Executors: how a job's steps actually run (host shell, native with limits, Docker, Kubernetes).

``base.Executor`` is the documented protocol. This module is the registry: a name (the agent's
``runner.type``) maps to the executor's class, built from the agent's settings with :func:`create`. The
built-in backends are registered by module path, so an agent loads the Docker SDK or the Kubernetes client
only when it uses them; :func:`register` adds one more (a backend is one module, plus its settings model
as a group of the agent config when it has settings).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.executors.base import Executor

BUILTIN: dict[str, str] = {
    "local": "agent.executors.local:LocalExecutor",
    "native": "agent.executors.native:NativeExecutor",
    "docker": "agent.executors.docker:DockerExecutor",
    "kubernetes": "agent.executors.kubernetes:KubernetesExecutor",
}
_registered: dict[str, type[Executor]] = {}


class UnknownExecutor(Exception):
    """No executor of that name is registered."""


def register(cls: type[Executor]) -> type[Executor]:
    """Add a backend under its ``name`` (usable as a class decorator)."""
    _registered[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    _registered.pop(name, None)


def names() -> list[str]:
    return sorted({*BUILTIN, *_registered})


def executor_class(name: str) -> type[Executor]:
    if name in _registered:
        return _registered[name]
    if name not in BUILTIN:
        raise UnknownExecutor(f"no executor named '{name}' (known: {', '.join(names())})")
    module, _, attribute = BUILTIN[name].partition(":")
    cls: type[Executor] = getattr(importlib.import_module(module), attribute)
    return cls


def create(config: AgentConfig) -> Executor:
    """The executor ``config.runner.type`` names, built from the agent's settings."""
    return executor_class(config.runner.type)(config)
