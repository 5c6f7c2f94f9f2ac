"""Printing answers: a table for people (the default), ``-o json`` for scripts, ``-o yaml``.

A table is a header row naming the columns, then one row per item, columns padded to their widest cell. Each
command says which fields make its columns; nested fields are named with dots (``current_load.active_jobs``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

FORMATS = ("table", "json", "yaml")


@dataclass(frozen=True)
class Column:
    header: str
    field: str


def lookup(item: Any, field: str) -> Any:
    for part in field.split("."):
        if not isinstance(item, dict):
            return None
        item = item.get(part)
    return item


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def table(rows: Sequence[Any], columns: Sequence[Column]) -> str:
    cells = [[c.header for c in columns]] + [[cell(lookup(row, c.field)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in cells)


def fields(item: dict[str, Any], skip: Sequence[str] = ()) -> str:
    """One item as ``KEY  value`` lines (``rustci runners get``, ``jobs get``)."""
    flat: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, child in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), child)
        elif not (isinstance(value, list) and value and all(isinstance(v, dict) for v in value)):
            flat.append((prefix, cell(value)))

    for key, value in item.items():
        if key not in skip:
            walk(key, value)
    width = max((len(k) for k, _ in flat), default=0)
    return "\n".join(f"{key.upper().replace('.', '_').ljust(width)}   {value}" for key, value in flat)


def emit(data: Any, fmt: str, human: str) -> None:
    """Print ``data`` as JSON or YAML, or print ``human`` (its table) for the default format."""
    if fmt == "json":
        print(json.dumps(data, indent=2))
    elif fmt == "yaml":
        print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), end="")
    else:
        print(human)
    sys.stdout.flush()


def show(fmt: str, data: Any, human: str) -> int:
    """:func:`emit`, then the command's exit status: success."""
    emit(data, fmt, human)
    return 0
