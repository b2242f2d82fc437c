"""Helpers for tests that start real processes and wait for them."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

UNBLOCK = str(Path(sys.executable).with_name("unblock"))


def sandbox_env(port: int, host: str = "127.0.0.1") -> dict[str, str]:
    """The UNBLOCK_* settings that point a service process at a sandbox tenant on ``host:port``."""
    return {
        "UNBLOCK_PS_SERVER": host,
        "UNBLOCK_PS_PORT": str(port),
        "UNBLOCK_PS_SSL": "false",
        "UNBLOCK_PS_AUTH": "basic",
        "UNBLOCK_PS_ENCRYPTION": "never",
        "UNBLOCK_PS_USERNAME": "sandbox",
        "UNBLOCK_PS_PASSWORD": "sandbox",
        "UNBLOCK_TENANT_ORGANIZATION": "contoso.onmicrosoft.com",
        "UNBLOCK_TENANT_APP_ID": "11111111-2222-3333-4444-555555555555",
        "UNBLOCK_TENANT_CERT_THUMBPRINT": "A" * 40,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def until(predicate: Callable[[], object], what: str, timeout: float = 20, interval: float = 0.05) -> None:
    """:func:`wait_until` for a test whose service runs on the test's own event loop: waits by sleeping
    on the loop, so the service goes on meanwhile."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


class Process:
    """A child process whose output goes to a file, read back when a test fails."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str], log_path: Path, cwd: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(list(argv), env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)

    def stop(self, timeout: float = 15) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()
        return int(self.proc.returncode)


def wait_http(url: str, proc: Process | None = None, *, timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            if proc is not None and not proc.alive():
                raise AssertionError(f"process exited early:\n{proc.output()}") from None
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer in {timeout}s") from None
            time.sleep(0.1)


@contextmanager
def unblock_process(
    args: Sequence[str], *, env: dict[str, str], tmp_path: Path, name: str = "unblock"
) -> Iterator[Process]:
    full_env = {**os.environ, **env}
    process = Process([UNBLOCK, *args], env=full_env, log_path=tmp_path / f"{name}.log", cwd=tmp_path)
    try:
        yield process
    finally:
        process.stop()
