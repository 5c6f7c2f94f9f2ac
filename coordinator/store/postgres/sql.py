"""Small helpers for the statements of the PostgreSQL stores."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from typing import Any

_MARK = re.compile(r"\?")


def affected(status: str) -> int:
    """The row count of a command status (``"DELETE 3"``, ``"INSERT 0 5"``)."""
    return int(status.rsplit(" ", 1)[-1])


def numbered(sql: str, after: int = 0) -> str:
    """Portable SQL with ``?`` placeholders (the engine-neutral fragments, e.g. ``coordinator.store.chunks``'
    filters) as PostgreSQL's ``$1``, ``$2``, …, numbered from ``after + 1``. The fragments never hold a ``?``
    inside a literal."""
    count = itertools.count(after + 1)
    return _MARK.sub(lambda _: f"${next(count)}", sql)


def has_tags(column: str, wanted: Sequence[str]) -> tuple[str, list[Any]]:
    """PostgreSQL: the JSON array in ``column`` contains the array of ``wanted``."""
    return f"{column}::jsonb @> ?::jsonb", [json.dumps(list(wanted))]
