"""Outages: the tenant endpoint gone for a while, hanging, and PostgreSQL restarted mid-run."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx

from service.sandbox.server import SandboxServer
from tests.helpers import wait_until
from tests.scale.harness import (
    Cluster,
    arrange_tenant,
    check_invariants,
    cluster_for,
    create_cases,
    setting,
    wait_all_terminal,
)


class ConnectionCounter:
    """Stands on the endpoint's port while it is down: accepts, counts and drops every connection."""

    def __init__(self, port: int) -> None:
        self.count = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(128)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.count += 1
            connection.close()

    def close(self) -> int:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        return self.count


def _ready(cluster: Cluster) -> int:
    return httpx.get(f"{cluster.base}/readyz", timeout=10).status_code


def test_the_endpoint_gone_for_a_while(database_url: str, tmp_path: Path, sandbox_server: SandboxServer) -> None:
    """Tenant endpoint down mid-run: /readyz goes 503, cases wait without a storm of calls, then finish."""
    outage = setting("UNBLOCK_TEST_OUTAGE_SECONDS", 30)
    total = int(setting("UNBLOCK_TEST_OUTAGE_CASES", 40))
    with cluster_for(database_url, tmp_path, sandbox_server.port, sandbox_server.base_url) as cluster:
        mix = arrange_tenant(cluster, total, prefix="outage")
        sandbox_server.tenant.configure({"latency_ms": {"*": 20}})
        for _ in range(2):
            cluster.start_worker()
        first, second = mix.all[: total // 2], mix.all[total // 2 :]
        asyncio.run(create_cases(cluster, first))
        assert _ready(cluster) == 200
        sandbox_server.stop()
        counter = ConnectionCounter(sandbox_server.port)
        started = time.monotonic()
        try:
            asyncio.run(create_cases(cluster, second))  # ALLOWED_DOMAINS: creating needs no tenant
            wait_until(lambda: _ready(cluster) == 503, timeout=20, interval=1, what="/readyz to report the outage")
            problem = httpx.get(f"{cluster.base}/readyz", timeout=10).json()
            assert "powershell" in problem["failing"]
            time.sleep(max(0.0, outage - (time.monotonic() - started)))
        finally:
            attempts = counter.close()
        sandbox_server.restart()
        wait_until(lambda: _ready(cluster) == 200, timeout=30, interval=0.5, what="/readyz to recover")
        wait_all_terminal(cluster, total, timeout=setting("UNBLOCK_TEST_SCALE_TIMEOUT", 240))
        check_invariants(cluster, mix)
        retries = cluster.query("SELECT count(*) FROM case_events WHERE type = 'step.retry_scheduled'")[0][0]
        print(f"\n{outage:.0f}s outage: {attempts} connection attempts from 3 processes, {retries} retries scheduled")
        # With the breaker, each process probes about once per interval (2 s): a few dozen attempts, not hundreds.
        bound = 3 * (outage / 2 + 6) * 2
        assert attempts <= bound, f"{attempts} connection attempts during a {outage}s outage (bound {bound:.0f})"


def test_every_command_hanging_for_a_while(database_url: str, tmp_path: Path, sandbox_server: SandboxServer) -> None:
    """Commands that never answer: calls time out, the breaker holds back the rest, everything finishes."""
    total = int(setting("UNBLOCK_TEST_HANG_CASES", 20))
    hangs = 12
    env = {"UNBLOCK_PS_CALL_TIMEOUT": "2"}
    with cluster_for(database_url, tmp_path, sandbox_server.port, sandbox_server.base_url, **env) as cluster:
        mix = arrange_tenant(cluster, total, prefix="hang")
        for _ in range(2):
            cluster.start_worker()
        wait_until(lambda: len(cluster.calls()) >= 4, timeout=30, what="the workers' runspaces to connect")
        connected = len(cluster.calls())
        cluster.control("POST", "/faults", json={"cmdlet": "*", "kind": "hang", "times": hangs})
        asyncio.run(create_cases(cluster, mix.all))
        wait_all_terminal(cluster, total, timeout=setting("UNBLOCK_TEST_SCALE_TIMEOUT", 240))
        check_invariants(cluster, mix)
        calls = cluster.calls()[connected:]
        hung = [c for c in calls if c["outcome"] == "fault: hang"]
        assert len(hung) == hangs
        timeouts = cluster.query("SELECT count(*) FROM case_events WHERE detail::text LIKE '%call_timeout%'")[0][0]
        assert timeouts >= 1
        # two workers with four warm runspaces each; the API opens runspaces only on demand
        assert sandbox_server.shells <= 2 * 4 + 1, "hung shells must be closed, not left behind"


def _pg(action: str) -> None:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_postgresql_restarted_mid_run(database_url: str, tmp_path: Path, sandbox_server: SandboxServer) -> None:
    """PostgreSQL stopped mid-run: the API answers 503 problem+json, workers reconnect, nothing lost or doubled."""
    total = int(setting("UNBLOCK_TEST_DBOUTAGE_CASES", 40))
    with cluster_for(database_url, tmp_path, sandbox_server.port, sandbox_server.base_url) as cluster:
        mix = arrange_tenant(cluster, total, prefix="pg")
        sandbox_server.tenant.configure({"latency_ms": {"*": 30}})
        for _ in range(2):
            cluster.start_worker()
        asyncio.run(create_cases(cluster, mix.all))
        time.sleep(0.5)
        headers = {"Authorization": f"Bearer {cluster.key}"}
        _pg("stop")
        try:
            down = httpx.get(f"{cluster.base}/v1/cases", headers=headers, timeout=20)
            assert down.status_code in (401, 503), down.text
            if down.status_code == 401:  # the key cache expired: its lookup also needs the database
                raise AssertionError(f"authentication failed while the database was down: {down.text}")
            assert down.headers["content-type"] == "application/problem+json"
            assert down.json()["type"] in ("/problems/unavailable",)
            ready = httpx.get(f"{cluster.base}/readyz", timeout=20)
            assert ready.status_code == 503
            assert "database" in ready.json()["failing"]
            time.sleep(3)
        finally:
            _pg("start")
        wait_until(
            lambda: httpx.get(f"{cluster.base}/readyz", timeout=10).status_code == 200,
            timeout=60,
            interval=0.5,
            what="the API to see the database again",
        )
        wait_all_terminal(cluster, total, timeout=setting("UNBLOCK_TEST_SCALE_TIMEOUT", 240))
        check_invariants(cluster, mix)
        duplicates = cluster.query("SELECT mailbox, count(*) FROM cases GROUP BY mailbox HAVING count(*) > 1")
        assert duplicates == []
        assert all(p.alive() for p in cluster.workers.values()), "workers must survive the outage"
