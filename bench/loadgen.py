"""A small HTTP/1.1 load generator on asyncio streams (standard library only).

Run as its own process so that it does not share an interpreter (or a GIL) with the server:

    python -m bench.loadgen --url http://127.0.0.1:8000/v1/cases/ID --header 'Authorization: Bearer K' \
        --concurrency 50 --duration 20

Each of ``concurrency`` clients keeps one connection alive and sends requests back to back;
``--path-file`` spreads requests over many paths (one per line). Prints one JSON object:
requests, errors, requests per second, and latency percentiles in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from urllib.parse import urlsplit


async def _client(
    host: str, port: int, paths: list[str], headers: str, stop_at: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    rng = random.Random()
    try:
        while time.monotonic() < stop_at:
            path = paths[rng.randrange(len(paths))]
            request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{headers}\r\n".encode()
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            chunked = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                lowered = name.strip().lower()
                if lowered == b"content-length":
                    length = int(value.strip())
                elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if chunked:
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def run(url: str, paths: list[str], headers: list[str], concurrency: int, duration: float) -> dict[str, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    header_text = "".join(f"{h}\r\n" for h in headers)
    latencies: list[float] = []
    errors: list[int] = []
    # a short warm-up, not counted: connections open, caches fill
    warm_stop = time.monotonic() + min(2.0, duration / 5)
    await asyncio.gather(*(_client(host, port, paths, header_text, warm_stop, [], []) for _ in range(concurrency)))
    started = time.monotonic()
    stop_at = started + duration
    await asyncio.gather(
        *(_client(host, port, paths, header_text, stop_at, latencies, errors) for _ in range(concurrency))
    )
    elapsed = time.monotonic() - started
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies, default=float("nan")) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL, or the one URL to request")
    parser.add_argument("--path-file", help="request these paths (one per line) at random")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--duration", type=float, default=20)
    args = parser.parse_args()
    if args.path_file:
        with open(args.path_file) as handle:
            paths = [line.strip() for line in handle if line.strip()]
    else:
        parts = urlsplit(args.url)
        paths = [parts.path + (f"?{parts.query}" if parts.query else "")]
    print(json.dumps(asyncio.run(run(args.url, paths, args.header, args.concurrency, args.duration))))


if __name__ == "__main__":
    main()
