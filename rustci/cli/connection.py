"""Where the CLI finds the coordinator and its credential: flags, then the environment, then a config file.

The config file is ``$RUSTCI_CLI_CONFIG``, else ``~/.config/rustci/cli.yaml``; a mapping with any of ``url``,
``api_key``, ``token``, ``ca_file``. Without any API key, the one ``rustci local up`` keeps in
``.rustci/coordinator/admin-api-key`` (relative to the working directory) is used.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from rustci.cli.errors import CliError
from rustci.client import DEFAULT_URL, RustCIClient

LOCAL_API_KEY_FILE = Path(".rustci/coordinator/admin-api-key")
CONFIG_KEYS = ("url", "api_key", "token", "ca_file")


def config_file() -> Path:
    explicit = os.environ.get("RUSTCI_CLI_CONFIG")
    if explicit:
        return Path(explicit)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "rustci" / "cli.yaml"


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        if os.environ.get("RUSTCI_CLI_CONFIG"):
            raise CliError(f"config file {path} does not exist (from $RUSTCI_CLI_CONFIG)")
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise CliError(f"config file {path} cannot be read: {e}".splitlines()[0]) from e
    if not isinstance(data, dict):
        raise CliError(f"config file {path}: the top level must be a mapping")
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise CliError(f"config file {path}: unknown key {unknown[0]!r} (allowed: {', '.join(CONFIG_KEYS)})")
    return {k: str(v) for k, v in data.items() if v is not None}


@dataclass(frozen=True)
class Connection:
    url: str
    api_key: str | None
    token: str | None
    ca_file: str | None
    insecure: bool

    def client(self) -> RustCIClient:
        return RustCIClient(
            self.url,
            self.api_key,
            token=self.token,
            ca_file=self.ca_file,
            insecure_skip_tls_verify=self.insecure,
        )


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CliError(f"coordinator URL {url!r} must start with http:// or https:// and name a host")
    return url


def resolve(args: argparse.Namespace) -> Connection:
    file = _read_config(config_file())

    def pick(flag: str, env: str) -> str | None:
        value = getattr(args, flag, None) or os.environ.get(env) or file.get(flag)
        return str(value) if value else None

    api_key = pick("api_key", "RUSTCI_API_KEY")
    if not api_key and LOCAL_API_KEY_FILE.is_file():
        api_key = LOCAL_API_KEY_FILE.read_text(encoding="utf-8").strip() or None
    ca_file = pick("ca_file", "RUSTCI_CA_FILE")
    if ca_file and not Path(ca_file).is_file():
        raise CliError(f"CA file {ca_file} does not exist")
    return Connection(
        url=check_url(pick("url", "RUSTCI_URL") or DEFAULT_URL),
        api_key=api_key,
        token=pick("token", "RUSTCI_TOKEN"),
        ca_file=ca_file,
        insecure=bool(getattr(args, "insecure_skip_tls_verify", False)),
    )
