"""Loading a daemon's YAML config into its typed settings, once, at the edge.

A bad file stops the daemon with one line that names the file, the key path and what is allowed. Selected
settings can be overridden per host by ``RUSTCI_*`` environment variables; each daemon declares its own map.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class Settings(BaseModel):
    """Base of every settings group: unknown keys are an error, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ConfigError(Exception):
    """A config file or override that cannot be used; ``str()`` is the one line to print."""


def _set_path(tree: dict[str, Any], path: str, value: str) -> None:
    *parents, leaf = path.split(".")
    node = tree
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    # The text as given: the settings model converts it to the field's type. Parsing it as YAML first would turn
    # a runner named "2024" or "yes", or an all-digit key, into a number or a boolean and refuse it.
    node[leaf] = value


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The settings class that owns the last key of ``loc`` (for listing the allowed keys)."""
    current: type[BaseModel] = model
    for key in loc[:-1]:
        field = current.model_fields.get(str(key))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        current = annotation
    return current


def _describe(model: type[BaseModel], error: Mapping[str, Any]) -> str:
    loc = tuple(error.get("loc", ()))
    key = ".".join(str(part) for part in loc) or "(top level)"
    if error.get("type") == "extra_forbidden":
        owner = _model_at(model, loc)
        allowed = ", ".join(owner.model_fields) if owner else "see the annotated example in configs/"
        return f"{key}: unknown key (allowed: {allowed})"
    got = error.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    return f"{key}: {error.get('msg', 'invalid value')}{shown}"


def load_settings(
    model: type[M],
    path: Path | None,
    env_overrides: Mapping[str, str],
    environ: Mapping[str, str] | None = None,
) -> M:
    """Read ``path`` (YAML; may be ``None`` for all defaults), apply the environment map, validate."""
    environ = os.environ if environ is None else environ
    where = str(path) if path else "(defaults)"
    data: Any = {}
    if path is not None:
        import yaml  # only a configuration file needs the YAML parser (a daemon set up by its environment not)

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as e:
            raise ConfigError(f"config error in {where}: cannot read file: {e.strerror or e}") from e
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"config error in {where}: not valid YAML{at}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config error in {where}: the top level must be a mapping of keys to values")
    for variable, key_path in env_overrides.items():
        if variable in environ:
            _set_path(data, key_path, environ[variable])
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        source = where
        loc = ".".join(str(part) for part in first.get("loc", ()))
        overriding = [var for var, key in env_overrides.items() if key == loc and var in environ]
        if overriding:
            source = f"{where} with {overriding[0]} from the environment"
        raise ConfigError(f"config error in {source}: {_describe(model, first)}{more}") from e
