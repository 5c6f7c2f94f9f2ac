"""Where a step's output lines become log entries: secret masking, the per-job size policy, encoding.

Every line an executor reports for one attempt of a job passes through that attempt's :class:`JobLog`
before it reaches the outbox (the on-disk spool), so nothing unmasked is ever written to disk or sent:

- **Masking.** The values of the job's ``masked`` variables and the runner's ``secrets`` — and their base64
  and URL-encoded forms — are replaced by ``[MASKED]``. The executor's line splitter has already joined a
  value a step wrote in several pieces; a value cut by the overlong-line split is caught by holding back the
  end of a :class:`~agent.executors.lines.Continued` piece that could be the start of a secret.
- **Size policy.** Past ``limit`` bytes of output, either the head (``limit - tail`` bytes) and the last
  ``tail`` bytes are kept, with one entry saying how much was dropped in between (``truncate``), or the job
  is failed (``fail``). Only the tail is held in memory, and it is bounded.
- **Encoding.** Entries are encoded to their JSON body here, once, with a template per step and stream
  (``shared.protocol.log_template``), so the outbox's writer only inserts strings and always outpaces the
  producer.
"""

from __future__ import annotations

import base64
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring_ascii as _quote
from typing import Protocol
from urllib.parse import quote, quote_plus

from agent.executors.base import OutputSink, Stream
from agent.executors.lines import CONTINUED, Continued
from shared import protocol
from shared.models import MIN_MASKED_LENGTH

MASK = "[MASKED]"
MIN_FRAGMENT = 6
"""A secret's base64 form inside a longer base64 text is masked only from this length: shorter fragments
would match unrelated text."""
TAIL_ENTRY_COST = 64
"""Each line held for the tail counts this many bytes on top of its text, so many short lines cannot hold
unbounded memory."""


class LineWriter(Protocol):
    """What the log sink writes to (the outbox)."""

    def line(self, body: str) -> None:
        """Take a JSON-encoded log entry, without waiting."""

    async def room(self) -> None:
        """Wait until the writer is not too far behind (backpressure on the step's output)."""

    async def flush(self) -> None:
        """Return once every entry taken so far is on disk."""


# --- masking -----------------------------------------------------------------------------------------------


def secret_forms(value: str) -> set[str]:
    """The strings that reveal ``value``: itself, its base64 encodings (standard and URL-safe, padded or not,
    and at each of the three alignments it can have inside a longer base64 text) and its URL encodings."""
    raw = value.encode()
    forms = {value}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(raw).decode()
        forms.update((whole, whole.rstrip("=")))
        for shift in (0, 1, 2):
            # Inside a longer text the value starts `shift` bytes into a 3-byte group; keep only the characters
            # made of the value's bits alone (the first and last ones mix in the neighbours' bits).
            encoded = encode(b"\0" * shift + raw).decode()
            fragment = encoded[-(-8 * shift // 6) : 8 * (shift + len(raw)) // 6]
            if len(fragment) >= MIN_FRAGMENT:
                forms.add(fragment)
    for quoted in (quote(value, safe=""), quote(value), quote_plus(value)):
        forms.add(quoted)
        forms.add(re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quoted))
    forms.discard("")
    return forms


class Masker:
    """Replaces every form of every secret with ``[MASKED]``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for value in secrets:
            if len(value) < MIN_MASKED_LENGTH:
                raise ValueError(f"a secret must be at least {MIN_MASKED_LENGTH} characters long")
            forms |= secret_forms(value)
        self._forms = sorted(forms, key=len, reverse=True)  # at one position the longest form wins
        self._pattern = re.compile("|".join(map(re.escape, self._forms))) if forms else None
        self._prefixes = {form[:n] for form in forms for n in range(1, len(form))}
        self._longest = len(self._forms[0]) if self._forms else 0

    def __bool__(self) -> bool:
        return self._pattern is not None

    def mask(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)

    def open_end(self, text: str) -> int:
        """How many characters at the end of ``text`` could be the start of a secret (0 if none)."""
        for n in range(min(self._longest - 1, len(text)), 0, -1):
            if text[-n:] in self._prefixes:
                return n
        return 0


class StepOutput:
    """The executor's output callback for one step; its ``drain`` makes the reader wait while the outbox's
    writer is far behind (see ``agent.executors.lines.drain``)."""

    __slots__ = ("_log", "_step", "_templates")

    def __init__(self, log: JobLog, step: str) -> None:
        self._log = log
        self._step = step
        self._templates = {stream: log._template(stream, step) for stream in ("stdout", "stderr")}

    def __call__(self, stream: Stream, text: str) -> None:
        log = self._log
        if not log._masker:
            log._keep(self._templates[stream], text)
        elif (masked := log._masked(self._step, stream, text)) is not None:
            log._keep(self._templates[stream], masked)

    async def drain(self) -> None:
        await self._log._writer.room()

    async def flush(self) -> None:
        await self._log._writer.flush()


# --- entries -----------------------------------------------------------------------------------------------


class _Clock:
    """``2024-01-15T10:30:00.123Z`` for now; formatted once per millisecond, not once per line."""

    def __init__(self) -> None:
        self._ms = -1
        self._text = ""

    def __call__(self) -> str:
        ms = int(time.time() * 1000)
        if ms != self._ms:
            self._ms = ms
            self._text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"
        return self._text


now = _Clock()

_LEVELS: dict[str, str] = {"stdout": "info", "stderr": "warn", "system": "info"}


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}".replace(".0 ", " ")
    return f"{n} bytes"


class JobLog:
    """The output of one attempt of one job on its way to the outbox.

    ``sink(step)`` is the executor's output callback for a step; ``close()`` ends the attempt's log (the
    dropped-bytes entry and the tail) and must run before the attempt's final report."""

    def __init__(
        self,
        writer: LineWriter,
        job_id: str,
        attempt: int,
        *,
        secrets: Iterable[str] = (),
        limit: int,
        tail: int,
        fail_on_limit: bool = False,
        on_failure: Callable[[], object] = lambda: None,
    ) -> None:
        if not 0 <= tail < limit:
            raise ValueError("the tail must be smaller than the limit")
        self._writer = writer
        self._job_id = job_id
        self._attempt = attempt
        self._masker = Masker(secrets)
        self._limit = limit
        self._fail_on_limit = fail_on_limit
        self._head_room = limit if fail_on_limit else limit - tail
        self._tail_room = tail
        self._on_failure = on_failure
        self._used = 0
        self._tail: deque[tuple[str, int]] = deque()  # (encoded entry, cost)
        self._tail_cost = 0
        self._dropped_bytes = 0
        self._dropped_lines = 0
        self._carry: dict[tuple[str, Stream], str] = {}
        self._closed = False
        self.failure: str | None = None
        """Why the job must fail (its log passed the limit with ``on_log_limit: fail``), else None."""

    # --- the executor's side ---------------------------------------------------------------------------

    def sink(self, step: str) -> OutputSink:
        return StepOutput(self, step)

    def _masked(self, step: str, stream: Stream, text: str) -> str | None:
        """Mask a line; for the piece of an overlong line, hold back an end that could start a secret and
        put it in front of the next piece, so a secret cut in two is still masked."""
        key = (step, stream)
        carried = self._carry.pop(key, "")
        if not isinstance(text, Continued):
            return self._masker.mask(carried + text)
        masked = self._masker.mask(carried + text[: -len(CONTINUED)])
        held = self._masker.open_end(masked)
        if held:
            self._carry[key] = masked[-held:]
            masked = masked[:-held]
        return masked + CONTINUED if masked else None

    def _template(self, stream: str, step: str | None, level: str | None = None) -> tuple[str, str]:
        """The JSON of an entry around its timestamp and message, built once per step and stream."""
        return protocol.log_template(self._job_id, self._attempt, stream, step, level or _LEVELS[stream])

    def _keep(self, template: tuple[str, str], text: str) -> None:
        body = protocol.LOG_START + now() + template[0] + _quote(text) + template[1]
        size = _size(text)
        self._used += size
        if self._used <= self._head_room:
            self._writer.line(body)
        elif self._fail_on_limit:
            self._fail()
        else:
            self._hold(body, size)

    def _hold(self, body: str, size: int) -> None:
        """Past the head: keep the line for the tail, dropping the oldest held line once the tail is full."""
        cost = size + TAIL_ENTRY_COST
        self._tail.append((body, cost))
        self._tail_cost += cost
        while self._tail_cost > self._tail_room and self._tail:
            _, dropped = self._tail.popleft()
            self._tail_cost -= dropped
            self._dropped_bytes += dropped - TAIL_ENTRY_COST
            self._dropped_lines += 1

    def _fail(self) -> None:
        if self.failure is not None:
            return
        self.failure = f"the job's log passed its limit of {_bytes(self._limit)} (on_log_limit: fail)"
        self.system("error", f"Job log limit of {_bytes(self._limit)} reached: failing the job")
        self._on_failure()

    # --- the runner's side -----------------------------------------------------------------------------

    def system(self, level: str, message: str, step: str | None = None) -> None:
        """An entry the agent itself writes about this job (never counted against the limit)."""
        middle, end = self._template("system", step, level)
        self._writer.line(protocol.LOG_START + now() + middle + _quote(self._masker.mask(message)) + end)

    def close(self) -> None:
        """Write what is held: ends of lines kept back for masking, then the dropped-bytes entry and the tail."""
        if self._closed:
            return
        self._closed = True
        for (step, stream), carried in self._carry.items():
            self._keep(self._template(stream, step), self._masker.mask(carried))
        self._carry.clear()
        if self._dropped_lines:
            self.system(
                "warn",
                f"Job log limit of {_bytes(self._limit)} reached: dropped {self._dropped_bytes} bytes "
                f"({self._dropped_lines} lines) between the first {_bytes(self._head_room)} and the last lines",
            )
        while self._tail:
            self._writer.line(self._tail.popleft()[0])
        self._tail_cost = 0
