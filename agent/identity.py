"""The runner identity an agent keeps across restarts: ``<state_dir>/identity.json``."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from shared.statefiles import DamagedState


@dataclass(frozen=True)
class Identity:
    runner_id: str
    token: str
    coordinator_url: str


def path_in(state_dir: Path) -> Path:
    return state_dir / "identity.json"


ADVICE = "move it aside to register as a new runner (the coordinator then lists the old one as inactive)"


def load(state_dir: Path) -> Identity | None:
    path = path_in(state_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Identity(str(data["runner_id"]), str(data["token"]), str(data["coordinator_url"]))
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise DamagedState(path, "is a directory, not the runner identity file", ADVICE) from None
    except OSError as e:
        raise DamagedState(path, f"cannot be read ({e.strerror or e})", "check its owner and permissions") from None
    except (ValueError, KeyError, TypeError) as e:
        problem = f"is damaged ({type(e).__name__}: {e})" if not isinstance(e, KeyError) else f"lacks {e}"
        raise DamagedState(path, problem, ADVICE) from None


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
