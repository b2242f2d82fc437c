"""Outages of the tenant endpoint: gone for a while, and hanging. (Database outages: test_database_outages.py.)"""

from __future__ import annotations

import asyncio
import socket
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
    """Tenant endpoint down mid-run: the API stays ready and accepts cases (it never talks to the runner host),
    cases wait without a storm of calls from the workers, then finish."""
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
            asyncio.run(create_cases(cluster, second))  # intake never needs the tenant
            ready = httpx.get(f"{cluster.base}/readyz", timeout=10)
            assert ready.status_code == 200, ready.text  # a runner-host outage takes no API out of rotation
            assert ready.json()["checks"] == {"database": "ok"}
            time.sleep(max(0.0, outage - (time.monotonic() - started)))
        finally:
            attempts = counter.close()
        sandbox_server.restart()
        wait_until(lambda: _ready(cluster) == 200, timeout=30, interval=0.5, what="/readyz to recover")
        wait_all_terminal(cluster, total, timeout=setting("UNBLOCK_TEST_SCALE_TIMEOUT", 240))
        check_invariants(cluster, mix)
        retries = cluster.query("SELECT count(*) FROM case_events WHERE type = 'step.retry_scheduled'")[0][0]
        print(f"\n{outage:.0f}s outage: {attempts} connection attempts from 2 workers, {retries} retries scheduled")
        # With the breaker, each worker probes about once per interval (2 s): a few dozen attempts, not hundreds.
        bound = 2 * (outage / 2 + 6) * 2
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
