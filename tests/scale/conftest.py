"""Scale-out and fault tests: real processes coordinating through PostgreSQL only.

They need PostgreSQL (several processes claim from one database), so they run in the
PostgreSQL pass of .ci/run; in the SQLite pass they are skipped with that reason.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.sandbox.server import SandboxServer
from tests.conftest import pg_requested


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/scale/" in str(item.fspath):
            item.add_marker(pytest.mark.postgres)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _needs_postgres() -> None:
    if pg_requested() is None:
        pytest.skip("needs PostgreSQL (UNBLOCK_TEST_DATABASE_URL); runs in the PostgreSQL pass of .ci/run")


@pytest.fixture
def sandbox_server() -> Iterator[SandboxServer]:
    """A sandbox tenant in a thread of the test process, so a test can stop and restart it (state kept)."""
    with SandboxServer(port=0, seed="empty") as server:
        yield server
