"""A TCP relay between an agent and its coordinator that tests stop, start and make cut the channel mid-message.

``stop()`` cuts every connection and refuses new ones; ``start()`` accepts again. Cuts land inside a frame: the
part of the chunk before the cut point is forwarded, then both ends are dropped.

- ``lose_answers``: every coordinator → agent chunk that carries an event acknowledgement (``"acked_seq"``; the
  channel is not compressed, and frames from the server are not masked) is cut just before the acknowledgement:
  the coordinator applied the batch, the agent never hears so.
- ``cut_down_on``: the next chunk coordinator → agent holding these bytes is cut in the middle of them (a job
  delivery cut mid-frame, say); ``cut_up_over``: the next chunk agent → coordinator larger than this many bytes
  (an event batch, never a heartbeat) is cut halfway (frames from the agent are masked, so size tells them
  apart). Each of the two cuts once, then resets to ``None``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from tests.helpers import free_port

ACK = b'"acked_seq"'


class TcpProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.lose_answers = False
        self.answers_lost = 0
        self.cut_down_on: bytes | None = None
        self.cut_up_over: int | None = None
        self.cuts = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._serving: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        if self._serving:
            await asyncio.wait(self._serving, timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        self._writers.add(writer)
        self.connections += 1
        upstream: asyncio.StreamWriter | None = None
        try:
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            self._writers.add(upstream)
            pipes = [
                asyncio.create_task(self._pipe(reader, upstream, down=False), name="proxy:up"),
                asyncio.create_task(self._pipe(up_reader, writer, down=True), name="proxy:down"),
            ]
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        except OSError:
            pass
        finally:
            for end in (writer, upstream):
                if end is not None:
                    end.transport.abort()
                    self._writers.discard(end)
            self._serving.discard(task)

    def _cut_at(self, data: bytes, down: bool) -> int | None:
        """Where to cut this chunk (bytes forwarded before the cut), or None to forward it whole."""
        if down and self.lose_answers and ACK in data:
            self.answers_lost += 1
            return data.index(ACK)
        if down and self.cut_down_on is not None and self.cut_down_on in data:
            at = data.index(self.cut_down_on) + len(self.cut_down_on) // 2
            self.cut_down_on = None
            return at
        if not down and self.cut_up_over is not None and len(data) > self.cut_up_over:
            self.cut_up_over = None
            return len(data) // 2
        return None

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, down: bool) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                at = self._cut_at(data, down)
                if at is not None:
                    self.cuts += 1
                    sink.write(data[:at])
                    with contextlib.suppress(OSError):
                        await sink.drain()
                    return  # the connection is cut inside the frame
                sink.write(data)
                await sink.drain()
