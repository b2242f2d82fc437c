"""The five measurements of `make bench`; each returns a dict of figures for results/latest.json."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import httpx
import psutil
from sqlalchemy import create_engine, text

from bench.processes import (
    Proc,
    bench_database,
    make_key,
    migrate,
    service_env,
    start_floor,
    start_sandbox,
    start_serve,
    start_worker,
)
from bench.seed import seed_cases
from service.persistence.db import sync_url

COMMAND_MS = 100.0
CONNECT_MS = 2000.0
#: Cases run before the overhead is measured, and not counted: a fresh process's first case pays
#: one-time costs (modules imported on first use, first compiles of statements), which would make
#: the p99 of 50 cases (their slowest) a measure of start-up instead of the service at work.
WARMUP_CASES = 2


def pct(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def _latency_of(cmdlet: str) -> float:
    return (CONNECT_MS if cmdlet.lower().startswith("connect-") else COMMAND_MS) / 1000


class Tenant:
    """The sandbox's control API: users, restrictions, latency, the call log."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=f"{url}/_sandbox", timeout=30)

    def configure(self, **values: Any) -> None:
        self.client.post("/config", json=values).raise_for_status()

    def restricted_users(self, addresses: list[str]) -> None:
        for address in addresses:
            self.client.post("/users", json={"upn": address}).raise_for_status()
            self.client.post("/senders", json={"address": address}).raise_for_status()

    def calls(self, since: int = 0) -> list[dict[str, Any]]:
        return list(self.client.get("/calls", params={"since": since}).json())

    def wait_connects(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while sum(1 for c in self.calls() if c["cmdlet"].startswith("Connect-")) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the pool did not connect {count} times in {timeout}s")
            time.sleep(0.2)


def _wait_end(client: httpx.Client, case_id: str) -> None:
    """Follow the case's live timeline (SSE) until the service says it ended."""
    with client.stream("GET", f"/v1/cases/{case_id}/events", headers={"Accept": "text/event-stream"}) as stream:
        for line in stream.iter_lines():
            if line.strip() == "event: end":
                return
    raise RuntimeError(f"the stream of {case_id} closed before the case ended")


# --- 1. overhead against the endpoint's floor ------------------------------------------------


@contextmanager
def _sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="unblock-bench-") as folder:
        yield f"sqlite:///{folder}/bench.db"


def overhead(pg: str, cases: int, *, sqlite: bool = False, split: bool = False) -> dict[str, Any]:
    """Cases one after another through `unblock serve`; on PostgreSQL, or on an SQLite file with ``sqlite``.

    ``split``: through `serve --no-worker` and a `worker` process instead (PostgreSQL), where a new
    case reaches the worker by NOTIFY and a claim rather than being handed over in-process.
    """
    name = "sqlite" if sqlite else "split" if split else "serve"
    sandbox, url = start_sandbox(name=f"sandbox-{name}")
    tenant = Tenant(url)
    try:
        tenant.configure(latency_ms={"*": COMMAND_MS, "Connect-*": CONNECT_MS}, unblock_limit_per_day=100_000)
        mailboxes = [f"seq{i}@contoso.com" for i in range(cases)]
        warmup = [f"warm{i}@contoso.com" for i in range(WARMUP_CASES)]
        tenant.restricted_users(warmup + mailboxes)
        with _sqlite_database() if sqlite else bench_database(pg) as database_url:
            env = service_env(database_url, sandbox_port(url), UNBLOCK_PS_POOL_SIZE=4)
            migrate(env)
            key = make_key(env)
            serve, base = start_serve(env, worker=not split, name=name)
            worker = start_worker(env, name="worker-split") if split else None
            try:
                tenant.wait_connects(2 * 4)
                _sequential(base, key, tenant, warmup)  # not counted: see WARMUP_CASES
                rows = _sequential(base, key, tenant, mailboxes)
            finally:
                if worker is not None:
                    worker.stop()
                serve.stop()
        # With the service stopped: the same commands straight through pypsrp, on the same sandbox.
        protocol = _protocol_floor(tenant, sandbox_port(url), rows[0]["sequence"], 10) if name == "serve" else None
    finally:
        sandbox.stop()
    ratios = [r["e2e"] / r["floor"] for r in rows]
    # The case's commands that waited for the one before (the investigation's reads go together):
    # each pays the protocol's cost per command at least once, whatever sends it.
    slots = statistics.median(1 + sum(1 for _, g in r["gaps"] if g > 0) for r in rows)
    dispatch = [r["dispatch"] * 1000 for r in rows]
    return {
        "cases": cases,
        "commands_per_case": statistics.median(r["commands"] for r in rows),
        "floor_s": statistics.median(r["floor"] for r in rows),
        "e2e_s_p50": statistics.median(r["e2e"] for r in rows),
        "overhead_ratio_p50": statistics.median(ratios),
        "overhead_ratio_mean": statistics.fmean(ratios),
        "overhead_ratio_p99": pct(ratios, 0.99),
        "dispatch_ms_p50": statistics.median(dispatch),
        "dispatch_ms_p99": pct(dispatch, 0.99),
        # idle time at the endpoint between the case's commands, summed per case (the median case)
        "between_commands_ms_p50": statistics.median(sum(g for _, g in r["gaps"]) for r in rows),
        # from the last command's end until the client saw the case end (recording, the live stream)
        "tail_ms_p50": statistics.median(
            (r["e2e"] - r["dispatch"] - r["floor"]) * 1000 - sum(g for _, g in r["gaps"]) for r in rows
        ),
        "sequence": rows[0]["sequence"],
        "sequential_commands": slots,
        **(
            {
                "protocol_ms_per_command": protocol,
                # the ratio a case would have if all the service added were the protocol's cost per command
                "protocol_floor_ratio": 1 + slots * protocol / 1000 / statistics.median(r["floor"] for r in rows),
            }
            if protocol is not None
            else {}
        ),
    }


def _protocol_floor(tenant: Tenant, port: int, sequence: list[str], cases: int) -> float:
    """Milliseconds each command costs beyond its latency with nothing but pypsrp and the sandbox:
    the case's commands back to back on one warm runspace (:func:`bench.percall.warm_sequence`),
    median of ``cases`` runs."""
    from bench.percall import warm_sequence

    commands = [cmdlet for cmdlet in sequence if not cmdlet.startswith("Connect-")]
    mailboxes = [f"floor{i}@contoso.com" for i in range(cases)]
    tenant.restricted_users(mailboxes)
    busy = sum(_latency_of(cmdlet) for cmdlet in commands)
    extra = [(warm_sequence(port, mailbox, commands) - busy) * 1000 / len(commands) for mailbox in mailboxes]
    return statistics.median(extra)


def busy_seconds(calls: list[dict[str, Any]]) -> float:
    """The endpoint's floor for a case: how long at least one of its commands was running there.

    Each command runs from when the sandbox received it for its fixed latency; the investigation
    sends its reads at once, so the floor is the length of the union of those spans (the critical
    path), not their sum.
    """
    spans = sorted(
        (start, start + _latency_of(c["cmdlet"]))
        for c in calls
        for start in [datetime.fromisoformat(c["at"]).timestamp()]
    )
    total, end = 0.0, float("-inf")
    for begin, finish in spans:
        if finish <= end:
            continue
        total += finish - max(begin, end)
        end = finish
    return total


def gaps(calls: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """Where the service kept the endpoint idle: before each command after the first, the
    milliseconds since the endpoint last had one of the case's commands running (0 for reads sent
    together)."""
    ordered = sorted(calls, key=lambda c: datetime.fromisoformat(c["at"]))
    result: list[tuple[str, float]] = []
    busy_until: float | None = None
    for call in ordered:
        start = datetime.fromisoformat(call["at"]).timestamp()
        if busy_until is not None:
            result.append((call["cmdlet"], max(0.0, start - busy_until) * 1000))
        end = start + _latency_of(call["cmdlet"])
        busy_until = end if busy_until is None else max(busy_until, end)
    return result


def sandbox_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _sequential(base: str, key: str, tenant: Tenant, mailboxes: list[str]) -> list[dict[str, Any]]:
    rows = []
    last_seq = max((c["seq"] for c in tenant.calls()), default=0)
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        for mailbox in mailboxes:
            started = time.perf_counter()
            created = client.post("/v1/cases", json={"mailbox": mailbox})
            created.raise_for_status()
            case = created.json()
            _wait_end(client, case["id"])
            e2e = time.perf_counter() - started
            calls = tenant.calls(since=last_seq)
            last_seq = max((c["seq"] for c in calls), default=last_seq)
            final = client.get(f"/v1/cases/{case['id']}").json()
            if final["outcome"] != "unblocked":
                raise RuntimeError(f"case ended {final['state']}/{final['outcome']}")
            first = datetime.fromisoformat(calls[0]["at"])
            rows.append(
                {
                    "e2e": e2e,
                    "floor": busy_seconds(calls),
                    "gaps": gaps(calls),
                    "commands": len(calls),
                    "dispatch": (first - datetime.fromisoformat(case["created_at"])).total_seconds(),
                    "sequence": [c["cmdlet"] for c in calls],
                }
            )
    return rows


# --- 2. throughput against the ideal -------------------------------------------------------------


def throughput(pg: str, cases: int, pool_size: int) -> dict[str, Any]:
    """Many cases at once through a pool of ``pool_size`` runspaces, against the pool's ideal.

    The ideal is the pool kept busy all the time: a runspace runs one command at a time, so a
    case costs the pool the sum of its commands' latencies (the investigation's reads overlap in
    time but each holds a runspace), and the pool can finish at most ``pool_size`` / that many
    cases a second. The commands are counted from the sandbox's log of this run.
    """
    sandbox, url = start_sandbox(name=f"sandbox-pool{pool_size}")
    tenant = Tenant(url)
    try:
        tenant.configure(latency_ms={"*": COMMAND_MS, "Connect-*": CONNECT_MS}, unblock_limit_per_day=100_000)
        mailboxes = [f"tp{pool_size}-{i}@contoso.com" for i in range(cases)]
        tenant.restricted_users(mailboxes)
        with bench_database(pg) as database_url:
            env = service_env(database_url, sandbox_port(url), UNBLOCK_PS_POOL_SIZE=pool_size)
            migrate(env)
            key = make_key(env)
            serve, base = start_serve(env, name=f"serve-pool{pool_size}")
            try:
                tenant.wait_connects(2 * pool_size)
                before = _cpu_seconds(serve, sandbox)
                asyncio.run(_create_all(base, key, mailboxes))
                makespan = _wait_closed(database_url, cases)
                after = _cpu_seconds(serve, sandbox)
                busy = sum(_latency_of(c["cmdlet"]) for c in tenant.calls() if not c["cmdlet"].startswith("Connect-"))
            finally:
                serve.stop()
    finally:
        sandbox.stop()
    achieved = cases / makespan
    runspace_s = busy / cases
    ideal = pool_size / runspace_s
    return {
        "pool_size": pool_size,
        "cases": cases,
        "seconds": makespan,
        "cases_per_s": achieved,
        "ideal_cases_per_s": ideal,
        "runspace_s_per_case": runspace_s,
        "efficiency": achieved / ideal,
        # CPU seconds per case, by process: the service, the sandbox tenant, the PostgreSQL server
        "cpu_ms_per_case": {k: (after[k] - before[k]) * 1000 / cases for k in after},
        "cpu_busy_of_machine": sum(after[k] - before[k] for k in after) / (makespan * (os.cpu_count() or 1)),
    }


def _cpu_seconds(serve: Proc, sandbox: Proc) -> dict[str, float]:
    """User + system CPU used so far by the service, the sandbox and every PostgreSQL server process.

    Each side is counted apart, so the sandbox's work (it stands in for Exchange Online) is not
    the service's. Server processes that come and go between two readings (a backend per new
    connection) are counted only while they live, which the pooled service's few do throughout.
    """

    def used(process: psutil.Process) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    database = 0.0
    for process in psutil.process_iter(["name"]):
        if process.info["name"] in ("postgres", "postmaster"):
            with contextlib.suppress(psutil.Error):
                database += used(process)
    return {
        "service": used(psutil.Process(serve.pid)),
        "sandbox": used(psutil.Process(sandbox.pid)),
        "database": database,
    }


async def _create_all(base: str, key: str, mailboxes: list[str]) -> None:
    semaphore = asyncio.Semaphore(32)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:

        async def one(mailbox: str) -> None:
            async with semaphore:
                (await client.post("/v1/cases", json={"mailbox": mailbox})).raise_for_status()

        await asyncio.gather(*(one(m) for m in mailboxes))


def _wait_closed(database_url: str, cases: int, timeout: float = 900) -> float:
    """Seconds from the first case created to the last one resolved, by the database's clock."""
    engine = create_engine(sync_url(database_url))
    try:
        deadline = time.monotonic() + timeout
        while True:
            with engine.connect() as connection:
                done, wrong = connection.execute(
                    text("SELECT count(*), count(*) FILTER (WHERE outcome <> 'unblocked') FROM cases WHERE NOT is_open")
                ).one()
                if done >= cases:
                    if wrong:
                        raise RuntimeError(f"{wrong} cases did not end unblocked")
                    first, last = connection.execute(text("SELECT min(created_at), max(finished_at) FROM cases")).one()
                    return float((last - first).total_seconds())
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done} of {cases} cases ended in {timeout}s")
            time.sleep(0.1)
    finally:
        engine.dispose()


# --- 3. the per-call-connection baseline ---------------------------------------------------------


def baseline(cases: int, sequence: list[str]) -> dict[str, Any]:
    """The same commands, each on a new remoting shell with a fresh Connect-* first."""
    from bench.percall import run_case

    sandbox, url = start_sandbox(name="sandbox-baseline")
    tenant = Tenant(url)
    try:
        tenant.configure(latency_ms={"*": COMMAND_MS, "Connect-*": CONNECT_MS}, unblock_limit_per_day=100_000)
        mailboxes = [f"base{i}@contoso.com" for i in range(cases)]
        tenant.restricted_users(mailboxes)
        times = [run_case(sandbox_port(url), mailbox, sequence) for mailbox in mailboxes]
        calls = tenant.calls()
    finally:
        sandbox.stop()
    removed = sum(1 for c in calls if c["cmdlet"] == "Remove-BlockedSenderAddress" and c["outcome"].startswith("ok"))
    if removed != cases:
        raise RuntimeError(f"the baseline unblocked {removed} of {cases}")
    return {"cases": cases, "per_case_s": statistics.median(times), "commands_per_case": len(sequence)}


# --- 4. the API under load -------------------------------------------------------------------------


def api_load(pg: str, total: int, concurrency: int, duration: float) -> dict[str, Any]:
    with bench_database(pg) as database_url:
        env = service_env(database_url, 9, UNBLOCK_PS_OPEN_LAZILY="true")
        migrate(env)
        key = make_key(env)
        started = time.monotonic()
        ids = seed_cases(database_url, total=total, open_cases=2000)
        seeded = time.monotonic() - started
        serve, base = start_serve(env, worker=False, name="serve-api")
        try:
            auth = f"Authorization: Bearer {key}"
            with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
                handle.write("\n".join(f"/v1/cases/{i}" for i in ids))
                paths = handle.name
            get = _loadgen(base, ["--path-file", paths, "--header", auth], concurrency, duration)
            listing = _loadgen(f"{base}/v1/cases?state=resolved&limit=50", ["--header", auth], concurrency, duration)
            api_rss = serve.rss_mb()
        finally:
            serve.stop()
        floors: dict[str, dict[str, Any]] = {}
        try:
            for stack in ("starlette", "fastapi"):
                floor, floor_base = start_floor(database_url, stack)
                try:
                    floors[stack] = _loadgen(
                        floor_base, ["--path-file", paths, "--header", auth], concurrency, duration
                    )
                    if stack == "starlette":
                        floors["list"] = _loadgen(
                            f"{floor_base}/v1/cases?state=resolved&limit=50", ["--header", auth], concurrency, duration
                        )
                finally:
                    floor.stop()
        finally:
            os.unlink(paths)
        floor_get = floors["starlette"]
    return {
        "cases": total,
        "seed_s": seeded,
        "get": get,
        "list": listing,
        "api_rss_mb": api_rss,
        "floor_get": floor_get,
        "frameworks_get": floors["fastapi"],
        "floor_list": floors["list"],
        "get_p99_vs_floor": get["p99_ms"] / floor_get["p99_ms"],
        "get_rps_vs_floor": floor_get["rps"] / get["rps"],
    }


def _loadgen(url: str, extra: list[str], concurrency: int, duration: float) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.loadgen",
            "--url",
            url,
            *extra,
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(done.stdout))


# --- 5. memory with many open cases -----------------------------------------------------------------


def memory(pg: str, open_cases: int) -> dict[str, Any]:
    sandbox, url = start_sandbox(name="sandbox-memory")
    tenant = Tenant(url)
    try:
        tenant.configure(latency_ms={"*": 5, "Connect-*": 50})
        with bench_database(pg) as database_url:
            env = service_env(database_url, sandbox_port(url), UNBLOCK_PS_POOL_SIZE=4)
            migrate(env)
            key = make_key(env)
            seed_cases(database_url, total=open_cases, open_cases=open_cases)
            serve, base = start_serve(env, name="serve-memory")
            try:
                tenant.wait_connects(8)
                _exercise(base, key)
                single = serve.rss_mb()
            finally:
                serve.stop()
            api, base = start_serve(env, worker=False, name="api-memory")
            worker = start_worker(env, name="worker-memory")
            try:
                time.sleep(3)
                _exercise(base, key)
                split = {"api": api.rss_mb(), "worker": worker.rss_mb()}
            finally:
                worker.stop()
                api.stop()
    finally:
        sandbox.stop()
    return {"open_cases": open_cases, "serve_rss_mb": single, "split_rss_mb": split}


def _exercise(base: str, key: str) -> None:
    """What a dashboard and a ticketing system do for a while: lists, pages, metrics."""
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        end = time.monotonic() + 10
        while time.monotonic() < end:
            page = client.get("/v1/cases", params={"open": "true", "limit": 200}).json()
            for case in page["items"][:20]:
                client.get(f"/v1/cases/{case['id']}")
            client.get("/metrics")


__all__ = ["Proc", "api_load", "baseline", "memory", "overhead", "throughput"]
