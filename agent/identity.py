"""The runner identity an agent keeps across restarts: ``<state_dir>/identity.json``."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Identity:
    runner_id: str
    token: str
    coordinator_url: str


def path_in(state_dir: Path) -> Path:
    return state_dir / "identity.json"


def load(state_dir: Path) -> Identity | None:
    try:
        data = json.loads(path_in(state_dir).read_text(encoding="utf-8"))
        return Identity(data["runner_id"], data["token"], data["coordinator_url"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        raise RuntimeError(f"{path_in(state_dir)} is damaged ({e}); remove it to register as a new runner") from e


def save(state_dir: Path, identity: Identity) -> None:
    """Write atomically (temp file, fsync, rename): a crash leaves the old identity or the new, never half."""
    state_dir.mkdir(parents=True, exist_ok=True)
    target = path_in(state_dir)
    tmp = target.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(asdict(identity), out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, target)
