"""PostgreSQL crashed or frozen under load, on a private cluster: bounded answers, recovery in seconds.

The service runs as real processes (one API, two workers) against a PostgreSQL cluster of this
test's own (tests/scale/private_postgres.py), never the machine's server. With cases in flight
and 150 ms per command at the tenant, the cluster is crashed (``pg_ctl stop -m immediate``) or
frozen (SIGSTOP of every server process) for a while. Assertions are against the configured
timeouts, with slack, not against absolute speeds; the worker lease is the default 60 s, so a
recovery that waited the lease out would fail the 20 s bound.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.persistence.migrate import upgrade
from service.sandbox.server import SandboxServer
from tests.scale.harness import Cluster, arrange_tenant, check_invariants, cluster_for, create_cases, setting
from tests.scale.private_postgres import PrivateCluster

#: API requests may wait on the database for UNBLOCK_DB_POOL_TIMEOUT + UNBLOCK_DB_STATEMENT_TIMEOUT.
TIMEOUTS = {"UNBLOCK_DB_POOL_TIMEOUT": "2s", "UNBLOCK_DB_STATEMENT_TIMEOUT": "4s", "UNBLOCK_DB_CONNECT_TIMEOUT": "2s"}
REQUEST_BOUND = 2 + 4 + 3.0  # the request deadline, plus slack
READY_BOUND = 3 + 2.0  # /readyz's own 3 s budget, plus slack
RECOVERY_BOUND = 20.0


@pytest.fixture
def private_pg() -> Iterator[PrivateCluster]:
    cluster = PrivateCluster()
    try:
        cluster.start()
        cluster.create_database()
        upgrade(cluster.url)
        yield cluster
    finally:
        cluster.close()


def _env() -> dict[str, str]:
    # The default lease (60 s): recovery must not wait it out. Info level: database_available is info.
    return {**TIMEOUTS, "UNBLOCK_WORKER_LEASE": "60s", "UNBLOCK_LOG_LEVEL": "info"}


def _timed(method: str, url: str, **kwargs: object) -> tuple[float, httpx.Response | None]:
    started = time.monotonic()
    try:
        response = httpx.request(method, url, timeout=30, **kwargs)  # type: ignore[arg-type]
    except httpx.TransportError:
        response = None
    return time.monotonic() - started, response


def _events(log_text: str) -> list[str]:
    out = []
    for line in log_text.splitlines():
        try:
            out.append(json.loads(line)["event"])
        except (ValueError, KeyError):
            continue
    return out


def _check_logs(cluster: Cluster) -> None:
    """Each worker saw one outage, logged as one warning and one recovery; no error-level lines."""
    for number, process in cluster.workers.items():
        text = process.output()
        events = _events(text)
        assert events.count("database_unavailable") == 1, (number, events)
        assert events.count("database_available") == 1, (number, events)
        errors = [line for line in text.splitlines() if '"level": "error"' in line]
        assert errors == [], errors[:3]


def _wait_in_flight_done(cluster: Cluster, pg_back: float, expected: int) -> float:
    """Seconds from the database's return until ``expected`` cases ended (fails past RECOVERY_BOUND)."""
    while True:
        done = int(cluster.query("SELECT count(*) FROM cases WHERE NOT is_open AND mailbox LIKE 'db%'")[0][0])
        elapsed = time.monotonic() - pg_back
        if done >= expected:
            return elapsed
        if elapsed > RECOVERY_BOUND:
            still = cluster.query(
                "SELECT state, count(*) FROM cases WHERE is_open AND mailbox LIKE 'db%' GROUP BY state"
            )
            raise AssertionError(
                f"{expected - done} cases still open {elapsed:.0f}s after recovery: {still}\n{cluster.logs()}"
            )
        time.sleep(0.25)


def _start(private_pg: PrivateCluster, tmp_path: Path, sandbox_server: SandboxServer, total: int):  # type: ignore[no-untyped-def]
    context = cluster_for(private_pg.url, tmp_path, sandbox_server.port, sandbox_server.base_url, **_env())
    cluster = context.__enter__()
    mix = arrange_tenant(cluster, total, prefix="db")
    sandbox_server.tenant.configure({"latency_ms": {"*": 150, "Connect-*": 200}})
    for _ in range(2):
        cluster.start_worker()
    asyncio.run(create_cases(cluster, mix.all))
    time.sleep(1.0)  # cases in flight
    return context, cluster, mix


def test_crashed_database(private_pg: PrivateCluster, tmp_path: Path, sandbox_server: SandboxServer) -> None:
    """Crashed: a new case is refused at once with 503 and Retry-After; /readyz says so within its budget;
    after the restart every case in flight finishes within seconds (not a lease), nothing lost or doubled."""
    total = int(setting("UNBLOCK_TEST_DBOUTAGE_CASES", 30))
    outage = setting("UNBLOCK_TEST_DBOUTAGE_SECONDS", 10)
    context, cluster, mix = _start(private_pg, tmp_path, sandbox_server, total)
    try:
        headers = {"Authorization": f"Bearer {cluster.key}"}
        private_pg.crash()
        down_at = time.monotonic()
        took, refused = _timed(
            "POST", f"{cluster.base}/v1/cases", json={"mailbox": "late@contoso.com"}, headers=headers
        )
        assert refused is not None
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"].isdigit()
        assert refused.json()["type"] == "/problems/unavailable"
        assert took < 3.0, f"a refused POST took {took:.1f}s"
        took, ready = _timed("GET", f"{cluster.base}/readyz")
        assert ready is not None
        assert (ready.status_code, ready.json()["failing"]) == (503, ["database"])
        assert took < READY_BOUND
        time.sleep(max(0.0, outage - (time.monotonic() - down_at)))
        private_pg.start()
        back = time.monotonic()
        recovered = _wait_in_flight_done(cluster, back, total)
        print(f"\ncrash of {outage:.0f}s: every case in flight ended {recovered:.1f}s after the database came back")
        check_invariants(cluster, mix)
        cluster.stop()
        _check_logs(cluster)
    finally:
        context.__exit__(None, None, None)


def test_frozen_database(private_pg: PrivateCluster, tmp_path: Path, sandbox_server: SandboxServer) -> None:
    """Frozen (nothing answers, connections stay open): every API request answers within the request
    deadline (201 or 503 with Retry-After), /readyz within its budget; after the thaw every case finishes."""
    total = int(setting("UNBLOCK_TEST_DBOUTAGE_CASES", 30))
    outage = setting("UNBLOCK_TEST_DBFREEZE_SECONDS", 15)
    context, cluster, mix = _start(private_pg, tmp_path, sandbox_server, total)
    try:
        headers = {"Authorization": f"Bearer {cluster.key}"}
        some_case = cluster.query("SELECT id FROM cases LIMIT 1")[0][0]
        private_pg.freeze()
        frozen_at = time.monotonic()
        slowest = 0.0
        try:
            while time.monotonic() - frozen_at < outage - REQUEST_BOUND:
                for method, path, body in (
                    ("POST", "/v1/cases", {"mailbox": "frozen@contoso.com"}),
                    ("GET", f"/v1/cases/{some_case}", None),
                    ("GET", "/v1/cases?limit=5", None),
                ):
                    took, answer = _timed(method, f"{cluster.base}{path}", json=body, headers=headers)
                    assert answer is not None, f"{method} {path}: no answer"
                    assert answer.status_code in (200, 201, 503), answer.text
                    if answer.status_code == 503:
                        assert answer.headers["retry-after"].isdigit()
                    assert took < REQUEST_BOUND, f"{method} {path} took {took:.1f}s"
                    slowest = max(slowest, took)
                took, ready = _timed("GET", f"{cluster.base}/readyz")
                assert ready is not None
                assert ready.status_code == 503
                assert took < READY_BOUND, f"/readyz took {took:.1f}s"
            time.sleep(max(0.0, outage - (time.monotonic() - frozen_at)))
        finally:
            private_pg.thaw()
        back = time.monotonic()
        recovered = _wait_in_flight_done(cluster, back, total)
        print(f"\nfreeze of {outage:.0f}s: slowest API answer {slowest:.1f}s; every case ended {recovered:.1f}s after")
        check_invariants(cluster, mix)
        extra = cluster.query("SELECT count(*) FROM cases WHERE mailbox = 'frozen@contoso.com'")[0][0]
        assert extra <= 1, "a case created twice"
    finally:
        context.__exit__(None, None, None)
