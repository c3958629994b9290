"""An HTTP load generator (asyncio), run in its own process by the reads scenario.

    python -m bench.loadgen '{"url": ..., "workspace": ..., "paths": [...], "seconds": 10,
                              "rate": 500}'          # open loop: a fixed offered rate
    python -m bench.loadgen '{..., "concurrency": 8}'  # closed loop: as fast as it goes

Requests cycle through ``paths``. Prints one JSON line: requests, errors, achieved
req/s, latency percentiles in ms (from sending each request; ``late`` counts sends
more than 5 ms behind the schedule) and the CPU this process used.

``"client": "httpx"`` sends through ``httpx.AsyncClient``; the default ``"raw"`` is a
minimal HTTP/1.1 keep-alive client over asyncio streams. Measured here, httpx costs
~1.4 ms of CPU per request and collapses past a few concurrent connections (pool
contention: 336 req/s at 32 connections with its process at 100% CPU, 691 req/s at
4), so on two shared cores it would mostly measure itself.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.stats import percentiles

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class RawClient:
    """Keep-alive HTTP/1.1 GETs over a pool of asyncio connections."""

    def __init__(self, url: str, headers: dict[str, str], connections: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.head = f"Host: {self.host}:{self.port}\r\n{extra}\r\n"
        self.connections = connections
        self.pool: asyncio.Queue[Connection] = asyncio.Queue()

    async def __aenter__(self) -> RawClient:
        for _ in range(self.connections):
            self.pool.put_nowait(await asyncio.open_connection(self.host, self.port))
        return self

    async def __aexit__(self, *exc: object) -> None:
        while not self.pool.empty():
            _, writer = self.pool.get_nowait()
            writer.close()

    async def get(self, path: str) -> int:
        reader, writer = await self.pool.get()
        try:
            writer.write(f"GET {path} HTTP/1.1\r\n{self.head}".encode())
            status = int((await reader.readline()).split()[1])
            length, chunked = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if chunked:
                while size := int((await reader.readline()).strip(), 16):
                    await reader.readexactly(size + 2)
                await reader.readline()
            else:
                await reader.readexactly(length)
        except BaseException:
            writer.close()
            self.pool.put_nowait(await asyncio.open_connection(self.host, self.port))
            raise
        self.pool.put_nowait((reader, writer))
        return status


class HttpxClient:
    def __init__(self, url: str, headers: dict[str, str], connections: int) -> None:
        limits = httpx.Limits(max_connections=connections)
        self.client = httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30)

    async def __aenter__(self) -> HttpxClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def get(self, path: str) -> int:
        return (await self.client.get(path)).status_code


Client = RawClient | HttpxClient


async def _get(client: Client, path: str, out: list[float], errors: list[int]) -> None:
    started = time.perf_counter()
    try:
        status = await client.get(path)
    except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, httpx.HTTPError):
        errors.append(0)
        return
    if status != 200:
        errors.append(status)
        return
    out.append((time.perf_counter() - started) * 1000)


async def open_loop(
    client: Client, paths: list[str], rate: float, seconds: float, drain: float
) -> dict[str, Any]:
    """Send at ``rate`` for ``seconds``, then wait ``drain`` seconds at most for the answers.

    A request still unanswered then counts as ``unfinished``, with the time it had
    waited as its latency (a lower bound), so an overloaded server ends the round.
    """
    count = max(1, round(rate * seconds))
    latencies: list[float] = []
    errors: list[int] = []
    tasks: list[asyncio.Task[None]] = []
    sent: list[float] = []
    late = 0
    t0 = time.perf_counter()
    for i in range(count):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.005:
            late += 1
        sent.append(time.perf_counter())
        tasks.append(asyncio.create_task(_get(client, paths[i % len(paths)], latencies, errors)))
    _, pending = await asyncio.wait(tasks, timeout=drain)
    now = time.perf_counter()
    for task, at in zip(tasks, sent, strict=True):
        if task in pending:
            task.cancel()
            latencies.append((now - at) * 1000)
    await asyncio.gather(*pending, return_exceptions=True)
    elapsed = min(now, time.perf_counter()) - t0
    return {
        "requests": count,
        "answered": count - len(pending),
        "unfinished": len(pending),
        "seconds": elapsed,
        "late": late,
        "latencies": latencies,
        "errors": errors,
    }


async def closed_loop(
    client: Client, paths: list[str], concurrency: int, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[int] = []
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**12))

    async def worker() -> None:
        while time.perf_counter() < deadline:
            await _get(client, paths[next(counter) % len(paths)], latencies, errors)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    return {
        "requests": len(latencies) + len(errors),
        "answered": len(latencies) + len(errors),
        "unfinished": 0,
        "seconds": elapsed,
        "late": 0,
        "latencies": latencies,
        "errors": errors,
    }


async def main(params: dict[str, Any]) -> dict[str, Any]:
    paths: list[str] = params["paths"]
    seconds = float(params["seconds"])
    headers = {"X-Workspace": params["workspace"]}
    kind = RawClient if params.get("client", "raw") == "raw" else HttpxClient
    concurrency = int(params.get("concurrency", 0))
    connections = int(params.get("connections", concurrency or 64))
    async with kind(params["url"], headers, connections) as client:
        await client.get(paths[0])  # connected and warm before timing
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        if "rate" in params:
            drain = float(params.get("drain", 5.0))
            result = await open_loop(client, paths, float(params["rate"]), seconds, drain)
        else:
            result = await closed_loop(client, paths, concurrency, seconds)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    lat = percentiles(result.pop("latencies"))
    errors = result.pop("errors")
    return {
        **result,
        "client": params.get("client", "raw"),
        "errors": len(errors),
        "error_codes": sorted(set(errors))[:5],
        "rps": (result["answered"] - len(errors)) / result["seconds"],
        "cpu_percent": 100 * cpu / result["seconds"],
        **lat,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))), flush=True)
