"""A bounded HTTP/1.1 load generator on asyncio streams (keep-alive, one request in flight per connection).

Two modes, both bounded by a request count and a deadline:
- open loop (`rate`): requests are scheduled at a fixed rate and each latency is measured from its scheduled
  time, so a stalled server shows up as latency instead of silently lowering the rate (no coordinated omission);
- closed loop (`concurrency`): that many connections send back to back, which finds the saturation throughput.

Written here rather than using httpx because a Python client is the bottleneck long before a 2-core server is
(httpx tops out around 1-2k requests/s per process); this one parses only the status line and Content-Length.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200) + len(self.errors)


async def _request(reader, writer, host: str, path: str) -> tuple[int, bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:"))
    return status, await reader.readexactly(length)


async def _connection(host: str, port: int, paths, next_slot, result: LoadResult, track_version: bool) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            slot = next_slot()
            if slot is None:
                return
            index, scheduled = slot
            try:
                status, body = await _request(reader, writer, f"{host}:{port}", paths[index % len(paths)])
            except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                result.errors.append(repr(error))
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            result.latencies_s.append(time.perf_counter() - scheduled)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if track_version and status == 200:
                version = json.loads(body).get("model_version")
                result.versions[version] = result.versions.get(version, 0) + 1
    finally:
        writer.close()


async def _run(host: str, port: int, paths: list[str], *, requests: int, deadline_s: float, rate: float | None,
               concurrency: int, track_version: bool) -> LoadResult:
    result, started = LoadResult(), time.perf_counter()
    sent = 0

    def next_slot():
        nonlocal sent
        now = time.perf_counter()
        if sent >= requests or now - started > deadline_s:
            return None
        index = sent
        sent += 1
        return index, (started + index / rate) if rate else now

    if rate:  # open loop: each connection waits for its request's scheduled time
        async def pacer_connection():
            reader, writer = await asyncio.open_connection(host, port)
            try:
                while (slot := next_slot()) is not None:
                    index, scheduled = slot
                    delay = scheduled - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    try:
                        status, _ = await _request(reader, writer, f"{host}:{port}", paths[index % len(paths)])
                    except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                        result.errors.append(repr(error))
                        continue
                    result.latencies_s.append(time.perf_counter() - scheduled)
                    result.statuses[status] = result.statuses.get(status, 0) + 1
            finally:
                writer.close()

        await asyncio.gather(*(pacer_connection() for _ in range(concurrency)))
    else:
        await asyncio.gather(*(_connection(host, port, paths, next_slot, result, track_version)
                               for _ in range(concurrency)))
    result.wall_s = time.perf_counter() - started
    return result


def run_load(host: str, port: int, paths: list[str], *, requests: int, deadline_s: float, rate: float | None = None,
             concurrency: int = 1, track_version: bool = False) -> LoadResult:
    """`requests` requests (fewer if `deadline_s` passes first) over `concurrency` connections."""
    return asyncio.run(_run(host, port, paths, requests=requests, deadline_s=deadline_s, rate=rate,
                            concurrency=concurrency, track_version=track_version))
