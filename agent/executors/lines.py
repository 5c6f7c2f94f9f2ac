"""Turning a byte stream into log lines, whatever a step throws at it.

- Invalid UTF-8 is replaced (U+FFFD), never an error.
- A line longer than ``max_line`` bytes is cut into pieces of at most that size, at a character boundary;
  every piece but the last is a :class:`Continued` ending in ``" [continued]"``. One runaway line never holds
  more than ``max_line`` bytes here.
- Carriage-return progress bars are coalesced: of a line overwritten with ``\\r`` only the last segment is
  kept, as a terminal would show it, and the overwritten segments are discarded as they arrive, so a progress
  bar that never prints a newline holds no memory either. ``\\r\\n`` is an ordinary line end.
"""

from __future__ import annotations

from collections.abc import Iterator

CONTINUED = " [continued]"


class Continued(str):
    """A piece of an overlong line that more pieces follow (the text includes the ``CONTINUED`` marker).

    A ``str``, so a sink that does not care sees plain text; the agent's log sink uses the distinction to
    mask a secret that straddles two pieces."""

    __slots__ = ()


class LineSplitter:
    """Feed bytes in any chunking; get complete lines out (decoded, without their line end)."""

    def __init__(self, max_line: int = 64 * 1024) -> None:
        if max_line < 8:
            raise ValueError("max_line must be at least 8 bytes")
        self._max = max_line
        self._pending = b""

    def feed(self, chunk: bytes) -> Iterator[str]:
        data = self._pending + chunk if self._pending else chunk
        parts = data.split(b"\n")
        rest = parts.pop()
        for raw in parts:
            if len(raw) <= self._max and b"\r" not in raw:
                yield raw.decode("utf-8", "replace")  # the common case, kept cheap
            else:
                yield from self._pieces(_last_segment(raw), final=True)
        # An unfinished line: what a \r overwrote is gone already (trailing \r's may be the start of \r\n).
        overwrite = rest.rfind(b"\r", 0, len(rest.rstrip(b"\r")))
        if overwrite != -1:
            rest = rest[overwrite + 1 :]
        self._pending = rest
        if len(rest) > self._max:
            yield from self._pieces(rest, final=False)

    def flush(self) -> Iterator[str]:
        """The unfinished last line, if any (call at end of stream)."""
        rest, self._pending = self._pending, b""
        if rest:
            yield from self._pieces(_last_segment(rest), final=True)

    def _pieces(self, raw: bytes, final: bool) -> Iterator[str]:
        """Cut ``raw`` into pieces of at most ``max_line`` bytes. With ``final``, the last piece is a plain
        line; without, a remainder shorter than ``max_line`` stays pending for the next chunk."""
        start = 0
        while len(raw) - start > self._max:
            cut = _char_boundary(raw, start + self._max, start)
            yield Continued(raw[start:cut].decode("utf-8", "replace") + CONTINUED)
            start = cut
        if final:
            yield raw[start:].decode("utf-8", "replace")
        else:
            self._pending = raw[start:]


def _last_segment(raw: bytes) -> bytes:
    """What a terminal shows of a line rewritten with carriage returns."""
    if b"\r" not in raw:
        return raw
    raw = raw.rstrip(b"\r")
    return raw[raw.rfind(b"\r") + 1 :]


def _char_boundary(raw: bytes, cut: int, floor: int) -> int:
    """Move ``cut`` back (at most 3 bytes) so it does not split a UTF-8 sequence."""
    for candidate in range(cut, max(cut - 4, floor), -1):
        if raw[candidate] & 0xC0 != 0x80:  # not a continuation byte: a character starts here
            return candidate
    return cut  # not UTF-8 anyway: any cut will do
