"""The sandbox tenant, served from a thread of the test process, reset before every test."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from service.sandbox.server import SandboxServer


@pytest.fixture(scope="session")
def _sandbox_server() -> Iterator[SandboxServer]:
    server = SandboxServer(port=0, seed="demo").start()
    yield server
    server.close()


@pytest.fixture
def sandbox(_sandbox_server: SandboxServer) -> Iterator[SandboxServer]:
    """The sandbox with the demo tenant, fresh for this test; no shells may be left behind."""
    _sandbox_server.tenant.reset("demo")
    yield _sandbox_server
    leaked = _sandbox_server.close_shells()
    assert leaked == 0, f"{leaked} remote shell(s) left open"


@pytest.fixture
def control(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.base_url + "/_sandbox", timeout=10) as client:
        yield client
