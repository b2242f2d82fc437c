"""A worker killed mid-step: another worker finishes the case, and the tenant saw one password."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.api.operations import location
from service.domain.findings import Containment
from service.domain.plan import RequestedActions
from service.domain.states import StepName
from service.persistence import cases, snapshots
from service.persistence.db import Database
from service.persistence.records import CaseSnapshot
from service.persistence.types import utcnow
from service.persistence.writer import NewCase
from service.sandbox.server import SandboxServer
from tests.helpers import sandbox_env, unblock_process, wait_until


@pytest.fixture
def sandbox_server() -> Iterator[SandboxServer]:
    with SandboxServer(port=0) as server:
        yield server


def worker_env(database_url: str, sandbox: SandboxServer) -> dict[str, str]:
    return {
        "UNBLOCK_DATABASE_URL": database_url,
        "UNBLOCK_SECRET_KEY": "0" * 64,
        **sandbox_env(sandbox.port, sandbox.host),
        "UNBLOCK_PS_POOL_SIZE": "1",
        "UNBLOCK_PS_OPERATION_TIMEOUT": "1",
        "UNBLOCK_WORKER_LEASE": "2s",
        "UNBLOCK_WORKER_POLL_INTERVAL": "0.5",
        "UNBLOCK_PROPAGATION_WAIT": "1s",
        "UNBLOCK_RECHECK_INTERVAL": "0.5s",
        "UNBLOCK_RETRY_INITIAL": "0.2s",
        "UNBLOCK_LOG_FORMAT": "json",
    }


def open_case(database_url: str, mailbox: str) -> str:
    async def create() -> str:
        db = Database(database_url)
        try:
            stored = await cases.create_case(
                db,
                new=NewCase(mailbox, "INC-CRASH", None, None, RequestedActions().resolve(Containment.enforce), False),
                actor="test",
                now=utcnow(),
                render=lambda c: ({"id": c.id}, location(c.id)),
            )
            return str(stored.body["id"])
        finally:
            await db.dispose()

    return asyncio.run(create())


def read_case(database_url: str, case_id: str) -> CaseSnapshot:
    async def read() -> CaseSnapshot:
        db = Database(database_url)
        try:
            return await snapshots.get_case(db, case_id=case_id)
        finally:
            await db.dispose()

    return asyncio.run(read())


def test_a_worker_killed_after_sending_the_reset(
    database_url: str, sandbox_server: SandboxServer, tmp_path: Path
) -> None:
    """SIGKILL while Update-MgUser is in flight; the next worker reuses the sealed password and finishes."""
    sandbox_server.tenant.configure({"latency_ms": {"Update-MgUser": 1500}})
    env = worker_env(database_url, sandbox_server)
    case_id = open_case(database_url, "rob@contoso.com")

    with unblock_process(["worker"], env=env, tmp_path=tmp_path, name="worker-a") as first:

        def reset_in_flight() -> bool:
            step = read_case(database_url, case_id).step(StepName.reset_password)
            return step.status == "running" and step.attempts == 1

        wait_until(reset_in_flight, timeout=20, what=f"the reset to start\n{first.output()}")
        time.sleep(0.5)  # the command is on the wire: the sandbox is working on it
        first.kill(signal.SIGKILL)
        killed_at = time.monotonic()

    assert read_case(database_url, case_id).step(StepName.reset_password).status == "running"  # never recorded
    with unblock_process(["worker"], env=env, tmp_path=tmp_path, name="worker-b") as second:
        wait_until(
            lambda: read_case(database_url, case_id).state in {"resolved", "failed", "escalated"},
            timeout=40,
            what=f"the second worker to finish\n{second.output()}",
        )
    recovered_in = time.monotonic() - killed_at
    case = read_case(database_url, case_id)
    assert (case.state, case.outcome) == ("resolved", "unblocked"), case
    assert case.step(StepName.reset_password).attempts == 2
    resets = [c for c in sandbox_server.tenant.calls if c.cmdlet == "Update-MgUser"]
    assert len(resets) == 2  # the killed worker's, which the tenant still carried out, and the retry
    hashes = {c.parameters["PasswordProfile"]["Password"]["sha256"] for c in resets}
    assert len(hashes) == 1, "the retry must send the very password sealed before the first attempt"
    user = sandbox_server.tenant.find_user("rob@contoso.com")
    assert user is not None
    assert user.password_sha256 in hashes
    removes = [
        c for c in sandbox_server.tenant.calls if c.cmdlet == "Remove-BlockedSenderAddress" and c.outcome == "ok"
    ]
    assert len(removes) == 1
    assert recovered_in < 30
