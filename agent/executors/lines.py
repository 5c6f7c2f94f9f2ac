"""Turning a byte stream into log lines: tolerant of invalid UTF-8 and of lines without an end."""

from __future__ import annotations

from collections.abc import Iterator

CONTINUED = " [continued]"


class LineSplitter:
    """Feed bytes in any chunking; get complete lines out. Overlong lines are cut at ``max_line`` bytes,
    each piece but the last marked as continued, so one runaway line never holds unbounded memory."""

    def __init__(self, max_line: int = 64 * 1024) -> None:
        self._max = max_line
        self._pending = bytearray()

    def feed(self, chunk: bytes) -> Iterator[str]:
        self._pending += chunk
        while True:
            end = self._pending.find(b"\n")
            if end == -1:
                break
            if end > self._max:
                yield _decode(self._pending[: self._max]) + CONTINUED
                del self._pending[: self._max]
                continue
            line = self._pending[:end]
            del self._pending[: end + 1]
            yield _decode(line.removesuffix(b"\r"))
        while len(self._pending) > self._max:
            yield _decode(self._pending[: self._max]) + CONTINUED
            del self._pending[: self._max]

    def flush(self) -> Iterator[str]:
        if self._pending:
            yield _decode(bytes(self._pending))
            self._pending.clear()


def _decode(raw: bytes | bytearray) -> str:
    return bytes(raw).decode("utf-8", errors="replace")
