"""``rustci-coordinator key create --name NAME --role ROLE``: a new named API key.

The key is printed once; the coordinator's config keeps only its hash, in the entry this prints for
``auth.keys``. Lose the key and you create another (and remove the old entry).
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from coordinator.auth import key_hash
from coordinator.config import ApiKey, KeyRole
from shared import ids


@dataclass(frozen=True)
class NewKey:
    name: str
    role: KeyRole
    key: str

    @property
    def entry(self) -> ApiKey:
        return ApiKey(name=self.name, role=self.role, hash=key_hash(self.key))

    def config_lines(self) -> str:
        """The YAML to add under ``auth.keys:`` (one list item, flow style so it is one line)."""
        item = yaml.safe_dump([self.entry.model_dump()], default_flow_style=None, sort_keys=False).strip()
        return f"    {item}"


def create(name: str, role: KeyRole) -> NewKey:
    ApiKey(name=name, role=role, hash="sha256:" + "0" * 64)  # the name is checked before a key is made
    return NewKey(name, role, ids.new_api_key())


def describe(new: NewKey) -> str:
    return "\n".join(
        [
            f"API key for {new.name} (role {new.role}); shown only now, keep it secret:",
            "",
            f"  {new.key}",
            "",
            "Add this entry to the coordinator's config under auth.keys, then restart it:",
            "",
            "auth:",
            "  keys:",
            new.config_lines(),
        ]
    )
