"""Several real processes on one PostgreSQL: the API, N workers, and the sandbox tenant.

Counts and durations come from the environment so CI can bound them (see .ci/run); the
defaults are what the issue asks for.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import create_engine, text

from service.persistence.db import sync_url
from tests.helpers import UNBLOCK, Process, free_port, sandbox_env, wait_http, wait_until

SECRET = "0" * 64
SCOPES = ("cases:read", "cases:write", "cases:approve", "credentials:reveal", "senders:read", "admin")


def setting(name: str, default: float) -> float:
    """A test knob (UNBLOCK_TEST_*): CI and developers shrink or stretch counts and durations."""
    assert name.startswith("UNBLOCK_TEST_"), name
    return float(os.environ.get(name, default))


def env_for(database_url: str, sandbox_port: int, **extra: str) -> dict[str, str]:
    values = {
        "UNBLOCK_DATABASE_URL": database_url,
        "UNBLOCK_SECRET_KEY": SECRET,
        **sandbox_env(sandbox_port),
        "UNBLOCK_PS_POOL_SIZE": "4",
        "UNBLOCK_PS_CALL_TIMEOUT": "10",
        "UNBLOCK_PS_OPERATION_TIMEOUT": "1",
        "UNBLOCK_ALLOWED_DOMAINS": "contoso.com",
        "UNBLOCK_PROPAGATION_WAIT": "1s",
        "UNBLOCK_RECHECK_INTERVAL": "0.5s",
        "UNBLOCK_RETRY_INITIAL": "0.2s",
        "UNBLOCK_RETRY_MAX": "2s",
        "UNBLOCK_RETRY_ATTEMPTS": "8",
        "UNBLOCK_WORKER_LEASE": "3s",
        "UNBLOCK_DISCOVERY_INTERVAL": "0",
        "UNBLOCK_PS_BREAKER_INTERVAL": "2s",
        "UNBLOCK_PS_BREAKER_THRESHOLD": "3",
        "UNBLOCK_RATE_LIMIT": "100000/minute",
        "UNBLOCK_AUTH_FAILURE_LIMIT": "100000/minute",  # the fuzzer sends bad credentials on purpose
        "UNBLOCK_LOG_FORMAT": "json",
        "UNBLOCK_LOG_LEVEL": "warning",
        "UNBLOCK_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",  # test receivers (and the fuzz's) are on loopback
    }
    values.update(extra)
    return values


@dataclass
class Cluster:
    """The API and workers as processes; the sandbox wherever the test put it."""

    tmp_path: Path
    database_url: str
    sandbox_port: int
    sandbox_url: str
    env: dict[str, str]
    api_port: int = 0
    key: str = ""
    api: Process | None = None
    workers: dict[int, Process] = field(default_factory=dict)
    _serial: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def spawn(self, args: list[str], name: str) -> Process:
        return Process(
            [UNBLOCK, *args],
            env={**os.environ, **self.env},
            log_path=self.tmp_path / f"{name}.log",
            cwd=self.tmp_path,
        )

    def start_api(self) -> None:
        self.api_port = free_port()
        self.api = self.spawn(["serve", "--no-worker", "--port", str(self.api_port)], "api")
        wait_http(f"{self.base}/healthz", self.api, timeout=60)

    def start_worker(self) -> int:
        self._serial += 1
        self.workers[self._serial] = self.spawn(["worker", "--no-migrate"], f"worker-{self._serial}")
        return self._serial

    def kill_worker(self, number: int) -> None:
        self.workers[number].kill(signal.SIGKILL)

    def pids(self) -> dict[str, int]:
        out = {"api": self.api.proc.pid} if self.api else {}
        out.update({f"worker-{n}": p.proc.pid for n, p in self.workers.items() if p.alive()})
        return out

    def logs(self) -> str:
        parts = []
        for name, process in [("api", self.api), *[(f"worker-{n}", p) for n, p in self.workers.items()]]:
            if process is not None:
                parts.append(f"--- {name} ---\n{process.output()[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        for process in list(self.workers.values()):
            process.stop(timeout=20)
        if self.api is not None:
            self.api.stop(timeout=20)

    # --- the tenant ---------------------------------------------------------------------------

    def control(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.sandbox_url}/_sandbox{path}", timeout=30, **kwargs)

    def calls(self) -> list[dict[str, Any]]:
        return list(self.control("GET", "/calls").json())

    # --- the database ---------------------------------------------------------------------------

    def query(self, sql: str, **params: Any) -> list[Any]:
        engine = create_engine(sync_url(self.database_url))
        try:
            with engine.connect() as connection:
                return list(connection.execute(text(sql), params))
        finally:
            engine.dispose()

    def states(self) -> dict[str, tuple[str, str | None, str | None]]:
        rows = self.query("SELECT mailbox, state, outcome, last_error FROM cases")
        return {r[0]: (r[1], r[2], (r[3] or {}).get("code") if r[3] else None) for r in rows}

    def open_count(self) -> int:
        return int(self.query("SELECT count(*) FROM cases WHERE is_open")[0][0])


async def create_cases(cluster: Cluster, mailboxes: list[str], *, concurrency: int = 16) -> list[str]:
    ids: list[str] = []
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(
        base_url=cluster.base, headers={"Authorization": f"Bearer {cluster.key}"}, timeout=30
    ) as client:

        async def one(mailbox: str) -> None:
            async with semaphore:
                response = await client.post("/v1/cases", json={"mailbox": mailbox, "ticket_ref": f"T-{mailbox}"})
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])

        await asyncio.gather(*(one(m) for m in mailboxes))
    return ids


def make_key(cluster: Cluster) -> str:
    import subprocess

    created = subprocess.run(
        [
            UNBLOCK,
            "keys",
            "create",
            "--name",
            "scale",
            *[arg for scope in SCOPES for arg in ("--scope", scope)],
        ],
        env={**os.environ, **cluster.env},
        cwd=cluster.tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    return created.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class Mix:
    restricted: list[str]
    clean: list[str]
    unknown: list[str]

    @property
    def all(self) -> list[str]:
        return self.restricted + self.clean + self.unknown


def arrange_tenant(cluster: Cluster, total: int, *, seed: int = 7, prefix: str = "user") -> Mix:
    """Half restricted, a third not, the rest unknown to the tenant; shuffled."""
    rng = random.Random(seed)
    n_restricted = total // 2
    n_clean = total // 3
    n_unknown = total - n_restricted - n_clean
    restricted = [f"{prefix}{i}r@contoso.com" for i in range(n_restricted)]
    clean = [f"{prefix}{i}c@contoso.com" for i in range(n_clean)]
    unknown = [f"{prefix}{i}x@contoso.com" for i in range(n_unknown)]
    cluster.control("POST", "/reset", json={"seed": "empty"})
    cluster.control("POST", "/config", json={"unblock_limit_per_day": 1000})
    for address in restricted + clean:
        assert cluster.control("POST", "/users", json={"upn": address}).status_code == 201
    for address in restricted:
        assert cluster.control("POST", "/senders", json={"address": address}).status_code == 201
    rng.shuffle(restricted)
    return Mix(restricted=restricted, clean=clean, unknown=unknown)


def check_invariants(cluster: Cluster, mix: Mix) -> None:
    """Every case in its right end state; one successful unblock and one distinct password per case."""
    states = cluster.states()
    wrong = []
    for mailbox in mix.restricted:
        if states.get(mailbox, ("?", None, None))[:2] != ("resolved", "unblocked"):
            wrong.append((mailbox, states.get(mailbox)))
    for mailbox in mix.clean:
        if states.get(mailbox, ("?", None, None))[:2] != ("resolved", "not_restricted"):
            wrong.append((mailbox, states.get(mailbox)))
    for mailbox in mix.unknown:
        if states.get(mailbox) != ("failed", "failed", "mailbox_not_found"):
            wrong.append((mailbox, states.get(mailbox)))
    if wrong:
        detail = cluster.query(
            "SELECT c.mailbox, e.type, e.step, e.detail::text FROM case_events e JOIN cases c ON c.id = e.case_id "
            "WHERE c.mailbox = :m ORDER BY e.id",
            m=wrong[0][0],
        )
        raise AssertionError(f"{len(wrong)} cases ended wrong, e.g. {wrong[:5]}; timeline of the first: {detail}")
    calls = cluster.calls()
    removes: dict[str, int] = {}
    passwords: dict[str, set[str]] = {}
    for call in calls:
        if call["cmdlet"] == "Remove-BlockedSenderAddress" and call["outcome"].startswith("ok"):
            address = call["parameters"]["SenderAddress"].lower()
            removes[address] = removes.get(address, 0) + 1
        if call["cmdlet"] == "Update-MgUser" and "PasswordProfile" in call["parameters"]:
            address = call["parameters"]["UserId"].lower()
            passwords.setdefault(address, set()).add(call["parameters"]["PasswordProfile"]["Password"]["sha256"])
    assert {a: n for a, n in removes.items() if n != 1} == {}
    assert set(removes) == set(mix.restricted)
    assert {a: len(p) for a, p in passwords.items() if len(p) != 1} == {}
    every = [p for ps in passwords.values() for p in ps]
    assert len(every) == len(set(every)), "two cases got the same password"


@contextmanager
def cluster_for(
    database_url: str, tmp_path: Path, sandbox_port: int, sandbox_url: str, **env: str
) -> Iterator[Cluster]:
    cluster = Cluster(
        tmp_path=tmp_path,
        database_url=database_url,
        sandbox_port=sandbox_port,
        sandbox_url=sandbox_url,
        env=env_for(database_url, sandbox_port, **env),
    )
    try:
        cluster.key = make_key(cluster)
        cluster.start_api()
        yield cluster
    finally:
        cluster.stop()


def wait_all_terminal(cluster: Cluster, expected: int, timeout: float) -> None:
    def done() -> bool:
        rows = cluster.query("SELECT count(*) FROM cases WHERE NOT is_open")
        return int(rows[0][0]) >= expected

    try:
        wait_until(done, timeout=timeout, interval=0.5, what=f"{expected} cases to end")
    except AssertionError as error:
        open_states = cluster.query("SELECT state, count(*) FROM cases WHERE is_open GROUP BY state")
        raise AssertionError(f"{error}; still open: {open_states}\n{cluster.logs()}") from None


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 1e6


def fds(pid: int) -> int:
    return psutil.Process(pid).num_fds()


def now() -> float:
    return time.monotonic()
