"""Fixtures of the security suite: a test-time PKI (trustme) and coordinators with named keys.

``pki`` is a CA with a server certificate for 127.0.0.1 and localhost, a client certificate for mutual TLS,
and a second, unrelated CA (the "wrong CA"); every file is written under the test's temporary directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path
    client_cert_file: Path
    client_key_file: Path
    other_ca_file: Path
    other_client_cert_file: Path
    other_client_key_file: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    root = tmp_path / "pki"
    root.mkdir()
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("agent-1.rustci.test")
    other = trustme.CA()
    stranger = other.issue_cert("agent-2.rustci.test")
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(root / "server.pem"))
    server.private_key_pem.write_to_path(str(root / "server.key"))
    client.cert_chain_pems[0].write_to_path(str(root / "client.pem"))
    client.private_key_pem.write_to_path(str(root / "client.key"))
    other.cert_pem.write_to_path(str(root / "other-ca.pem"))
    stranger.cert_chain_pems[0].write_to_path(str(root / "stranger.pem"))
    stranger.private_key_pem.write_to_path(str(root / "stranger.key"))
    return Pki(
        ca_file=root / "ca.pem",
        cert_file=root / "server.pem",
        key_file=root / "server.key",
        client_cert_file=root / "client.pem",
        client_key_file=root / "client.key",
        other_ca_file=root / "other-ca.pem",
        other_client_cert_file=root / "stranger.pem",
        other_client_key_file=root / "stranger.key",
    )
