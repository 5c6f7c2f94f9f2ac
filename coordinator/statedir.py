"""Finding the state of a coordinator that already runs, for commands that work beside it (``token``).

Such a command loads the same config as the daemon (``-c FILE`` or ``RUSTCI_CONFIG``, with the same
``RUSTCI_STATE_DIR`` and other overrides), so it finds the same ``state_dir``. It reads the secrets the daemon
keeps there and never writes any: a command run in the wrong place must fail, not mint a fresh set of keys
that the running coordinator has never heard of.
"""

from __future__ import annotations

from coordinator.config import CoordinatorConfig


class StateNotFound(Exception):
    """The state directory, or a secret in it, is not there; ``str()`` is the one line to print."""


def kept_secret(config: CoordinatorConfig, name: str, configured: str | None) -> str:
    """The configured secret, else the one the coordinator keeps in ``<state_dir>/<name>``."""
    if configured:
        return configured
    state_dir = config.state_dir.resolve()
    path = state_dir / name
    if not state_dir.is_dir():
        raise StateNotFound(
            f"no coordinator state directory at {state_dir}: give the coordinator's own -c FILE and"
            " RUSTCI_STATE_DIR (under systemd: /var/lib/rustci/coordinator), or start the coordinator once"
        )
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise StateNotFound(
            f"{path} does not exist: {state_dir} is not a coordinator's state directory, or the secret is"
            " configured there (auth.*) and not here; no key was created"
        ) from None
    except OSError as e:
        raise StateNotFound(f"cannot read {path}: {e.strerror or e} (run as the coordinator's user)") from e
    if not secret:
        raise StateNotFound(f"{path} is empty")
    return secret


def jwt_secret(config: CoordinatorConfig) -> str:
    """The secret that signs the running coordinator's bearer JWTs."""
    return kept_secret(config, "jwt-secret", config.auth.jwt_secret)


__all__ = ["StateNotFound", "jwt_secret", "kept_secret"]
