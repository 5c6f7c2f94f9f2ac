"""Job secrets at rest: the values of a job's ``masked`` variables are encrypted before the job is stored.

The store writes a job's spec with each masked value (in ``environment`` and in every step's ``env``) replaced
by ``sealed:v1:<Fernet token>`` and decrypts them when it reads the job back, so the rest of the coordinator sees
the spec as submitted and the database file (WAL included) never holds a masked value in plain text, from the
moment the job is accepted. The key (Fernet: AES-128-CBC with HMAC-SHA256, from ``cryptography``) lives in
``<state_dir>/secrets.key``, mode 0600, made on first start; coordinators sharing a PostgreSQL database share
one key through it (``coordinator.fleet_keys``), so any of them unseals what another sealed. ``cryptography`` is
loaded when the first masked value is sealed or unsealed (a coordinator whose jobs mask nothing never loads it);
the key's form is checked at start all the same.

A retry after a coordinator restart works: the key is read again from the state directory and held jobs are
delivered with their secrets. If the key is lost or replaced, the values cannot be decrypted: they stay sealed
(never sent as if they were the secret) and the dispatcher cancels such a job with a reason instead of
delivering it. Back up ``secrets.key`` with the database, and keep both readable by the coordinator only.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from coordinator import fleet_keys
from shared.models import JobSubmission

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

log = structlog.get_logger(__name__)

PREFIX = "sealed:v1:"
KEY_FILE = fleet_keys.SEALING_KEY


def load_key(state_dir: Path) -> bytes:
    """The state directory's key, made (mode 0600) if there is none yet."""
    return fleet_keys.StateDirKeys(state_dir).kept_now(KEY_FILE).encode()


def _masked_maps(data: dict[str, Any]) -> list[dict[str, Any]]:
    maps = [data.get("environment") or {}]
    maps += [step.get("env") or {} for step in data.get("steps") or []]
    return [m for m in maps if isinstance(m, dict)]


def _checked(key: bytes) -> bytes:
    try:  # the check Fernet(key) makes, without loading it
        valid = len(base64.urlsafe_b64decode(key)) == 32
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise ValueError("Fernet key must be 32 url-safe base64-encoded bytes.")
    return key


class Sealer:
    def __init__(self, key: bytes) -> None:
        self._key = _checked(key)
        self._cipher: Fernet | None = None

    @property
    def _fernet(self) -> Fernet:
        if self._cipher is None:
            from cryptography.fernet import Fernet

            self._cipher = Fernet(self._key)
        return self._cipher

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> Sealer:
        return cls(load_key(state_dir))

    async def adopt(self, source: fleet_keys.KeySource) -> None:
        """Seal and unseal with the key ``source`` keeps from now on (a coordinator of a fleet takes the fleet's
        key from the shared database at startup, before it stores or reads any job)."""
        self._key = _checked((await source.kept(KEY_FILE)).encode())
        self._cipher = None

    def seal(self, spec: JobSubmission) -> str:
        """The spec as stored: JSON with each masked value encrypted."""
        data = spec.model_dump(mode="json")
        for values in _masked_maps(data):
            for name in spec.masked:
                value = values.get(name)
                if isinstance(value, str):
                    values[name] = PREFIX + self._fernet.encrypt(value.encode()).decode()
        return json.dumps(data, separators=(",", ":"))

    def unseal(self, text: str, job_id: str) -> JobSubmission:
        data = json.loads(text)
        masked = set(data.get("masked") or ())
        for values in _masked_maps(data):
            for name, value in values.items():
                if name in masked and isinstance(value, str) and value.startswith(PREFIX):
                    from cryptography.fernet import InvalidToken

                    try:
                        values[name] = self._fernet.decrypt(value[len(PREFIX) :].encode()).decode()
                    except InvalidToken:
                        log.error(
                            "a masked value of a job cannot be decrypted with this state directory's secrets.key",
                            job_id=job_id,
                            variable=name,
                        )
        return JobSubmission.model_validate(data)


def still_sealed(spec: JobSubmission) -> list[str]:
    """The masked variables whose values could not be decrypted (the key changed since the job was stored)."""
    found = []
    for values in [spec.environment, *(step.env for step in spec.steps)]:
        found += [name for name in spec.masked if values.get(name, "").startswith(PREFIX)]
    return sorted(set(found))
