"""Kubernetes-style resource quantities (``"500m"``, ``"2"``, ``"4Gi"``, ``"1G"``) as numbers."""

from __future__ import annotations

import re
from decimal import Decimal

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|K|M|G|T|Ki|Mi|Gi|Ti)?$")
_FACTORS: dict[str | None, Decimal] = {
    None: Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10**3),
    "K": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
}


def _quantity(text: str) -> Decimal:
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"not a quantity: {text!r}")
    return Decimal(match.group(1)) * _FACTORS[match.group(2)]


def nano_cpus(cpu_limit: str) -> int:
    """``"2000m"`` or ``"2"`` CPUs → 2_000_000_000 (Docker's ``NanoCpus``)."""
    return int(_quantity(cpu_limit) * 1_000_000_000)


def memory_bytes(memory_limit: str) -> int:
    """``"4Gi"`` → 4 * 1024**3, ``"1G"`` → 10**9 bytes."""
    return int(_quantity(memory_limit))


def cpus(cpu_limit: str) -> float:
    """``"200m"`` → 0.2 CPUs."""
    return float(_quantity(cpu_limit))
