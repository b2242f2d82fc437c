"""A client generated from the OpenAPI description drives a case end to end.

`unblock openapi` writes the description, openapi-python-client (pinned in the dev extra) generates
a package from it, and the test uses only that package's typed functions and models: open a case
with an Idempotency-Key, replay it, poll it to the end, read its events, reveal the password twice,
and read a 422 and a 404 as typed problems. docs/integrations/python-client.md is the same example
in prose. Generation must be clean: a warning means the description has something the generator
cannot turn into code, and fails the test.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.sandbox.server import SandboxServer
from tests.helpers import UNBLOCK
from tests.stack import Stack, make_key, running_stack

BIN = Path(sys.executable).parent
GENERATOR = str(BIN / "openapi-python-client")
PACKAGE = "unblock_client"
TERMINAL = {"resolved", "failed", "escalated", "cancelled"}


def _run(args: list[str], cwd: Path) -> str:
    # the generator formats its output with ruff, found on PATH; no UNBLOCK_* setting of the shell applies
    env = {name: value for name, value in os.environ.items() if not name.startswith("UNBLOCK_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The description as `unblock openapi` writes it, and the package generated from it, importable."""
    root = tmp_path_factory.mktemp("generated")
    _run([UNBLOCK, "openapi", "--output", "openapi.json"], cwd=root)
    output = _run(
        [
            GENERATOR,
            "generate",
            "--path",
            "openapi.json",
            "--output-path",
            PACKAGE,
            "--meta",
            "none",
            "--fail-on-warning",
        ],
        cwd=root,
    )
    assert "warning" not in output.lower(), output
    assert (root / PACKAGE / "api" / "cases" / "create_case.py").is_file(), output
    sys.path.insert(0, str(root))
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(port=0, seed="demo") as server:
        yield server


@pytest.fixture
async def stack(database_url: str, sandbox: SandboxServer) -> AsyncIterator[Stack]:
    async with running_stack(database_url, sandbox) as s:
        yield s


@pytest.fixture
async def api(generated: Path, stack: Stack) -> AsyncIterator[Any]:
    """The generated AuthenticatedClient, with a key of the three scopes a service desk needs, talking
    to the stack's application in process (httpx's ASGI transport: no port)."""
    from unblock_client import AuthenticatedClient

    key = await make_key(stack.runtime, "generated-client", ["cases:write", "cases:read", "credentials:reveal"])
    transport = httpx.ASGITransport(app=stack.app, raise_app_exceptions=False)
    async with AuthenticatedClient(
        base_url="http://unblock.test", token=key, httpx_args={"transport": transport}
    ) as client:
        yield client


async def test_a_case_end_to_end_through_the_generated_client(api: Any) -> None:
    from unblock_client.api.cases import create_case, get_case, list_case_events, reveal_credential
    from unblock_client.models import (
        CaseCreate,
        CaseOutcome,
        CasePublic,
        CaseState,
        EventsPage,
        EventType,
        FieldError,
        Problem,
        RevealedCredential,
    )

    # open, with an Idempotency-Key: 201 and a typed case
    body = CaseCreate(mailbox="julia@contoso.com", ticket_ref="INC0042")
    first = await create_case.asyncio_detailed(client=api, body=body, idempotency_key="gen-client-0001")
    assert first.status_code == 201, first.content
    assert isinstance(first.parsed, CasePublic)
    case_id = first.parsed.id
    assert first.parsed.mailbox == "julia@contoso.com"
    assert first.parsed.state == CaseState.SECURING_ACCOUNT  # created with its reset started (local worker)
    assert "Idempotent-Replayed" not in first.headers

    # the same request again: the stored response, marked as a replay
    again = await create_case.asyncio_detailed(client=api, body=body, idempotency_key="gen-client-0001")
    assert again.status_code == 201, again.content
    assert isinstance(again.parsed, CasePublic)
    assert again.parsed.id == case_id
    assert again.headers["Idempotent-Replayed"] == "true"

    # poll to a terminal state
    deadline = time.monotonic() + 30
    while True:
        case = await get_case.asyncio(client=api, case_id=case_id)
        assert isinstance(case, CasePublic), case
        if case.state in TERMINAL:
            break
        assert time.monotonic() < deadline, f"case stayed in {case.state}"
        await asyncio.sleep(0.1)
    assert (case.state, case.outcome) == (CaseState.RESOLVED, CaseOutcome.UNBLOCKED)
    assert case.credential is not None
    assert case.credential.available is True

    # the timeline, typed
    events = await list_case_events.asyncio(client=api, case_id=case_id)
    assert isinstance(events, EventsPage), events
    types = [event.type_ for event in events.items]
    assert types[0] == EventType.CASE_CREATED
    assert EventType.CREDENTIAL_AVAILABLE in types
    assert events.items[-1].to_state == CaseState.RESOLVED
    assert [e.id for e in events.items] == sorted(e.id for e in events.items)

    # the password, once
    revealed = await reveal_credential.asyncio_detailed(client=api, case_id=case_id)
    assert revealed.status_code == 200, revealed.content
    assert isinstance(revealed.parsed, RevealedCredential)
    assert len(revealed.parsed.password) >= 12
    assert revealed.parsed.expires_at.tzinfo is not None

    # and never again: 410, a typed problem
    gone = await reveal_credential.asyncio_detailed(client=api, case_id=case_id)
    assert gone.status_code == 410, gone.content
    assert isinstance(gone.parsed, Problem)
    assert gone.parsed.type_ == "/problems/credential_gone"
    assert gone.parsed.status == 410
    assert revealed.parsed.password not in gone.content.decode()

    # bad input: 422, a typed problem naming each field at fault
    invalid = await create_case.asyncio_detailed(client=api, body=CaseCreate(mailbox="not an address"))
    assert invalid.status_code == 422, invalid.content
    assert isinstance(invalid.parsed, Problem)
    assert invalid.parsed.type_ == "/problems/invalid_input"
    assert invalid.parsed.status == 422
    assert isinstance(invalid.parsed.errors, list), invalid.content
    assert all(isinstance(error, FieldError) for error in invalid.parsed.errors)
    assert [error.field for error in invalid.parsed.errors] == ["mailbox"], invalid.content

    # an unknown case: 404, a typed problem
    missing = await get_case.asyncio_detailed(client=api, case_id="01jd8v6k0s3x4y5z6a7b8c9d0e")
    assert missing.status_code == 404, missing.content
    assert isinstance(missing.parsed, Problem)
    assert missing.parsed.type_ == "/problems/case_not_found"
    assert missing.parsed.request_id
