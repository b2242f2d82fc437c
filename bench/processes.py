"""The processes a benchmark runs (the sandbox tenant, `unblock serve`, `unblock worker`) and its database.

Every benchmark talks to real processes over real sockets, as a deployment would; only the
tenant is the sandbox. Each run gets a database of its own on the local PostgreSQL, dropped
afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.persistence.db import sync_url
from tests.helpers import UNBLOCK, Process, free_port, sandbox_env

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SECRET = "1" * 64
SCOPES = ("cases:read", "cases:write", "cases:approve", "credentials:reveal", "senders:read", "admin")
WORKDIR = Path(tempfile.gettempdir()) / "unblock-bench"


class Proc(Process):
    """A child process with its output in a log file (printed if it dies early), by name."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str], name: str) -> None:
        WORKDIR.mkdir(parents=True, exist_ok=True)
        super().__init__(argv, env=env, log_path=WORKDIR / f"{name}.log", cwd=WORKDIR)
        self.name = name

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float:
        return psutil.Process(self.pid).memory_info().rss / 1e6

    def wait_http(self, url: str, *, timeout: float = 60, status: int | None = None) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = httpx.get(url, timeout=2)
                if status is None or response.status_code == status:
                    return
            except httpx.TransportError:
                pass
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.log_path.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not ready in {timeout}s; see {self.log_path}")
            time.sleep(0.1)


@contextmanager
def bench_database(base_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one benchmark, dropped afterwards."""
    url = make_url(sync_url(base_url))
    name = f"unblock_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield base_url.replace(f"/{url.database}", f"/{name}", 1) if url.database else f"{base_url}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def service_env(database_url: str, sandbox_port: int, **extra: Any) -> dict[str, str]:
    values = {
        "UNBLOCK_DATABASE_URL": database_url,
        "UNBLOCK_SECRET_KEY": SECRET,
        **sandbox_env(sandbox_port),
        "UNBLOCK_ALLOWED_DOMAINS": "contoso.com",
        "UNBLOCK_PROPAGATION_WAIT": "0",
        "UNBLOCK_DISCOVERY_INTERVAL": "0",
        "UNBLOCK_RATE_LIMIT": "10000000/minute",
        "UNBLOCK_LOG_FORMAT": "json",
        "UNBLOCK_LOG_LEVEL": "warning",
    }
    values.update({k: str(v) for k, v in extra.items()})
    base = {k: v for k, v in os.environ.items() if not k.startswith("UNBLOCK_")}
    return {**base, **values}


def start_sandbox(name: str = "sandbox") -> tuple[Proc, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNBLOCK_")}
    env["UNBLOCK_LOG_LEVEL"] = "warning"
    proc = Proc([UNBLOCK, "sandbox", "--port", str(port), "--seed", "empty"], env=env, name=name)
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{url}/_sandbox/state")
    return proc, url


def make_key(env: dict[str, str]) -> str:
    args = [UNBLOCK, "keys", "create", "--name", "bench", *[a for s in SCOPES for a in ("--scope", s)]]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=True, cwd=WORKDIR)
    return done.stdout.strip().splitlines()[-1]


def migrate(env: dict[str, str]) -> None:
    WORKDIR.mkdir(parents=True, exist_ok=True)
    subprocess.run([UNBLOCK, "migrate"], env=env, capture_output=True, text=True, check=True, cwd=WORKDIR)


def start_serve(env: dict[str, str], *, worker: bool = True, name: str = "serve") -> tuple[Proc, str]:
    port = free_port()
    args = [UNBLOCK, "serve", "--port", str(port), "--no-migrate"]
    if not worker:
        args.append("--no-worker")
    proc = Proc(args, env=env, name=name)
    base = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{base}/healthz")
    return proc, base


def start_worker(env: dict[str, str], *, name: str = "worker") -> Proc:
    return Proc([UNBLOCK, "worker", "--no-migrate"], env=env, name=name)


def start_floor(database_url: str, stack: str = "starlette") -> tuple[Proc, str]:
    """bench.floor: the same row served by Starlette + psycopg alone (or FastAPI + SQLAlchemy alone)."""
    port = free_port()
    libpq = make_url(sync_url(database_url)).set(drivername="postgresql").render_as_string(hide_password=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNBLOCK_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)  # Proc runs in WORKDIR
    proc = Proc(
        [sys.executable, "-m", "bench.floor", "--database-url", libpq, "--port", str(port), "--stack", stack],
        env=env,
        name=f"floor-{stack}",
    )
    base = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{base}/v1/cases/none", status=404)
    return proc, base
