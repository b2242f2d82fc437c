"""Many tenants in one service, end to end: contoso from the settings, fabrikam added with the CLI.

A case for mia@fabrikam.com names no tenant and resolves in fabrikam, every command of it run in
a runspace connected to fabrikam; contoso's cases run alongside; a key limited to fabrikam sees
and opens only fabrikam's cases, through the API and on the dashboard; /v1/tenants lists both
without secrets; a mailbox no tenant accepts is 422.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from service.domain.plan import Actions
from service.domain.tenant import Restriction
from service.persistence import keys as key_rows
from service.persistence.discovery import record_listing
from service.persistence.models import ApiKey
from service.sandbox.server import SandboxServer
from service.security.keys import generate_key
from tests.stack import SECRET, Stack, running_stack

FABRIKAM_APP_ID = "22222222-3333-4444-5555-666666666666"
FABRIKAM_THUMBPRINT = "B" * 40


def _cli_env(monkeypatch: pytest.MonkeyPatch, database_url: str, sandbox: SandboxServer) -> None:
    """The settings a `unblock` command on the same host would read (those of the stack)."""
    for name, value in {
        "UNBLOCK_DATABASE_URL": database_url,
        "UNBLOCK_SECRET_KEY": SECRET,
        "UNBLOCK_PS_SERVER": sandbox.host,
        "UNBLOCK_PS_PORT": str(sandbox.port),
        "UNBLOCK_PS_SSL": "false",
        "UNBLOCK_PS_AUTH": "basic",
        "UNBLOCK_PS_ENCRYPTION": "never",
        "UNBLOCK_PS_USERNAME": "sandbox",
        "UNBLOCK_PS_PASSWORD": "sandbox",
        "UNBLOCK_PS_CALL_TIMEOUT": "10",
        "UNBLOCK_PS_OPERATION_TIMEOUT": "1",
    }.items():
        monkeypatch.setenv(name, value)


UNBLOCK = str(Path(sys.executable).with_name("unblock"))


async def cli(*args: str, output: list[str] | None = None) -> int:
    """`unblock ...` as from a shell (its own process and event loop); stdout and stderr into ``output``."""
    process = await asyncio.create_subprocess_exec(
        UNBLOCK, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=dict(os.environ)
    )
    out, _ = await process.communicate()
    if output is not None:
        output.append(out.decode())
    return process.returncode or 0


async def _add_fabrikam() -> str:
    output: list[str] = []
    code = await cli(
        "tenants",
        "add",
        "fabrikam",
        "--organization",
        "fabrikam.onmicrosoft.com",
        "--app-id",
        FABRIKAM_APP_ID,
        "--cert-thumbprint",
        FABRIKAM_THUMBPRINT,
        output=output,
    )
    assert code == 0, output
    return output[0]


def _runspaces(stack: Stack) -> dict[str, set[str]]:
    """Which tenants each runspace ran commands for (connects included)."""
    seen: dict[str, set[str]] = {}
    with stack.sandbox.tenant.lock:
        for call in stack.sandbox.calls:
            seen.setdefault(call.runspace, set()).add(call.tenant)
    return seen


async def test_a_second_tenant_added_with_the_cli_takes_its_cases(
    database_url: str, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cli_env(monkeypatch, database_url, sandbox)
    async with running_stack(database_url, sandbox) as stack:
        out = await _add_fabrikam()
        assert "tenant fabrikam: active" in out  # the CLI reached the endpoint and read its domains
        stack.runtime.tenant_cache = None
        mia, rob = await stack.open("mia@fabrikam.com"), await stack.open("rob@contoso.com")
        assert mia["tenant"] == "fabrikam"
        assert rob["tenant"] == "default"
        done = await stack.wait_for(mia["id"])
        assert (done["state"], done["outcome"]) == ("resolved", "unblocked")
        assert (await stack.wait_for(rob["id"]))["outcome"] == "unblocked"
        assert stack.sandbox.tenant_named("fabrikam").lookup("mia@fabrikam.com") is None
        # Every runspace served one tenant only, and mia's commands ran in fabrikam's.
        assert all(len(tenants) == 1 for tenants in _runspaces(stack).values()), _runspaces(stack)
        with stack.sandbox.tenant.lock:
            mias = [c for c in stack.sandbox.calls if "mia@fabrikam.com" in str(c.parameters)]
        assert mias
        assert {c.tenant for c in mias} == {"fabrikam"}
        # A mailbox no tenant accepts is refused at once.
        foreign = await stack.client.post("/v1/cases", json={"mailbox": "eve@tailspin.example"})
        assert foreign.status_code == 422
        assert foreign.json()["type"] == "/problems/foreign_mailbox"
        unknown = await stack.client.post("/v1/cases", json={"mailbox": "noah@fabrikam.com", "tenant": "northwind"})
        assert unknown.status_code == 422
        assert unknown.json()["type"] == "/problems/unknown_tenant"
        # The tenants, without secrets.
        listed = (await stack.client.get("/v1/tenants")).json()["items"]
        assert [t["name"] for t in listed] == ["default", "fabrikam"]
        fabrikam = listed[1]
        assert fabrikam["status"] == "active"
        assert fabrikam["accepted_domains"] == ["fabrikam.com", "fabrikam.onmicrosoft.com"]
        assert "password" not in str(fabrikam).lower().replace("password_backend", "").replace("password_set", "")
        assert (await stack.client.get("/v1/tenants/northwind")).status_code == 404
        # The case lists filter by tenant.
        only = (await stack.client.get("/v1/cases", params={"tenant": "fabrikam"})).json()["items"]
        assert [c["id"] for c in only] == [mia["id"]]
        # The CLI names the tenant too, and refuses a name that cannot be one in one line.
        output: list[str] = []
        assert await cli("case", "open", "noah@fabrikam.com", "--tenant", "fabrikam", output=output) == 0, output
        printed = output[-1]
        assert json.loads(printed[printed.index("{\n") :])["tenant"] == "fabrikam"  # (log lines go before it)
        assert await cli("case", "open", "ann@contoso.com", "--tenant", "Bad_Name", output=output) == 2
        assert output[-1].startswith("unblock: error: --tenant 'Bad_Name': a tenant name is")
        assert output[-1].count("\n") == 1


async def test_a_key_limited_to_a_tenant_sees_and_opens_only_its_cases(
    database_url: str, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cli_env(monkeypatch, database_url, sandbox)
    async with running_stack(database_url, sandbox) as stack:
        await _add_fabrikam()
        stack.runtime.tenant_cache = None
        contoso_case = await stack.open("rob@contoso.com")
        output: list[str] = []
        scopes = ("--scope", "cases:write", "--scope", "cases:read")
        created = await cli("keys", "create", "--name", "fabrikam-desk", *scopes, "--tenant", "fabrikam", output=output)
        assert created == 0, output
        assert "limited to tenants fabrikam" in output[0]
        limited = output[0].strip().splitlines()[-1]
        headers: dict[str, Any] = {"Authorization": f"Bearer {limited}"}
        hidden = await stack.client.get(f"/v1/cases/{contoso_case['id']}", headers=headers)
        assert hidden.status_code == 404
        assert (await stack.client.get(f"/v1/cases/{contoso_case['id']}/events", headers=headers)).status_code == 404
        refused = await stack.client.post("/v1/cases", json={"mailbox": "ann@contoso.com"}, headers=headers)
        assert refused.status_code == 403
        mine = await stack.client.post("/v1/cases", json={"mailbox": "mia@fabrikam.com"}, headers=headers)
        assert mine.status_code == 201, mine.text
        listed = (await stack.client.get("/v1/cases", headers=headers)).json()["items"]
        assert [c["id"] for c in listed] == [mine.json()["id"]]
        assert (await stack.client.get("/v1/tenants", headers=headers)).status_code == 403  # admin only
        # A limited key never holds admin.
        assert await cli("keys", "create", "--name", "x", "--scope", "admin", "--tenant", "fabrikam") == 2
        await stack.wait_for(mine.json()["id"])


async def test_tenants_cli_lists_shows_and_disables(
    database_url: str, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cli_env(monkeypatch, database_url, sandbox)
    identity = ("--app-id", FABRIKAM_APP_ID, "--cert-thumbprint", FABRIKAM_THUMBPRINT)
    # UNBLOCK_ALLOWED_DOMAINS: default's domains are known without a worker, so intake can tell.
    async with running_stack(database_url, sandbox, worker=False, allowed_domains=["contoso.com"]) as stack:
        await _add_fabrikam()
        output: list[str] = []
        assert await cli("tenants", "list", output=output) == 0
        assert "fabrikam.com" in output[-1]
        assert await cli("tenants", "show", "fabrikam", output=output) == 0
        assert FABRIKAM_APP_ID in output[-1]
        assert await cli("tenants", "add", "Bad_Name", "--organization", "x.onmicrosoft.com", *identity) == 2
        assert await cli("tenants", "add", "twin", "--organization", "fabrikam.com", *identity) == 2
        assert await cli("tenants", "add", "fabrikam", "--organization", "f.onmicrosoft.com", *identity) == 2
        assert await cli("tenants", "disable", "fabrikam") == 0
        stack.runtime.tenant_cache = None
        refused = await stack.client.post("/v1/cases", json={"mailbox": "mia@fabrikam.com"})
        assert refused.status_code == 422
        assert refused.json()["type"] == "/problems/foreign_mailbox"
        named = await stack.client.post("/v1/cases", json={"mailbox": "mia@fabrikam.com", "tenant": "fabrikam"})
        assert named.json()["type"] == "/problems/unknown_tenant"


async def _limited_key(stack: Stack, name: str, tenants: list[str], scopes: list[str]) -> tuple[str, str]:
    """A key limited to ``tenants``, made as `keys create --tenant` makes it: its plaintext and id."""
    new = generate_key()
    record = await key_rows.create_key(
        stack.runtime.db,
        name=name,
        prefix=new.prefix,
        key_hash=new.key_hash,
        scopes=scopes,
        tenants=tenants,
        signer=stack.runtime.audit_signer,
    )
    return new.plaintext, record.id


async def _sign_in(stack: Stack, key: str) -> dict[str, str]:
    """The headers of a browser signed in to the dashboard with ``key`` (and no bearer key)."""
    login = await stack.client.post(
        "/ui/login",
        data={"key": key},
        headers={"Origin": "http://unblock.test", "Sec-Fetch-Site": "same-origin", "Authorization": ""},
        follow_redirects=False,
    )
    assert login.status_code == 303, login.text
    return {"Authorization": "", "Cookie": f"unblock_session={login.cookies['unblock_session']}"}


def _restricted(address: str) -> Restriction:
    return Restriction(
        sender_address=address,
        reason="EmailSendingLimitExceeded;ExceedingLimitType=External",
        blocked_at=datetime(2026, 11, 26, 8, 2, 11, tzinfo=UTC),
        changed_at=None,
        temporary_block=False,
    )


def _senders_table(page: str) -> list[str]:
    """The addresses in the dashboard's restricted-senders table."""
    table = page.split('<table id="senders">', 1)[1].split("</table>", 1)[0]
    return re.findall(r"<td>([^<@]+@[^<]+)</td>", table)


async def test_a_limited_key_sees_only_its_tenants_on_the_dashboard(
    database_url: str, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key limited to fabrikam signs in to the dashboard and sees fabrikam's cases and restricted
    senders only; contoso's case is 404 (page and live stream), as through the API. Its tenants are
    read from the key's row on each request, not kept in the session."""
    _cli_env(monkeypatch, database_url, sandbox)
    # No worker: the cases stay open, and default's (contoso's) domains are known from the settings.
    async with running_stack(database_url, sandbox, worker=False, allowed_domains=["contoso.com"]) as stack:
        await _add_fabrikam()
        stack.runtime.tenant_cache = None
        rob, mia = await stack.open("rob@contoso.com"), await stack.open("mia@fabrikam.com")
        assert (rob["tenant"], mia["tenant"]) == ("default", "fabrikam")
        now = stack.runtime.clock()
        for tenant, address in (("default", "rob@contoso.com"), ("fabrikam", "mia@fabrikam.com")):
            await record_listing(
                stack.runtime.db,
                listed=[_restricted(address)],
                valid={address},
                now=now,
                auto_remediate=False,
                require_approval=False,
                actions=Actions(),
                report=False,
                tenant=tenant,
            )
        key, key_id = await _limited_key(stack, "fabrikam-desk", ["fabrikam"], ["cases:read", "senders:read"])
        browser = await _sign_in(stack, key)

        page = await stack.client.get("/ui", headers=browser, follow_redirects=False)
        assert page.status_code == 200, page.text
        assert mia["id"] in page.text
        assert rob["id"] not in page.text
        assert "rob@contoso.com" not in page.text  # neither contoso's case nor its restricted sender
        assert _senders_table(page.text) == ["mia@fabrikam.com"]
        partial = await stack.client.get("/ui/partials/cases", headers=browser)
        assert partial.status_code == 200
        assert mia["id"] in partial.text
        assert rob["id"] not in partial.text
        assert (await stack.client.get(f"/ui/cases/{mia['id']}", headers=browser)).status_code == 200
        hidden = await stack.client.get(f"/ui/cases/{rob['id']}", headers=browser)
        assert hidden.status_code == 404
        assert "rob@contoso.com" not in hidden.text
        assert (await stack.client.get(f"/ui/cases/{rob['id']}/stream", headers=browser)).status_code == 404

        # An unlimited key still sees every tenant's cases, and the default tenant's senders.
        everyone = await stack.client.get("/ui", headers=await _sign_in(stack, stack.key))
        assert mia["id"] in everyone.text
        assert rob["id"] in everyone.text
        assert _senders_table(everyone.text) == ["rob@contoso.com"]

        # The session names the key only: narrowing the key's row narrows the open session at once.
        async with stack.runtime.db.write() as session:
            row = await session.get(ApiKey, key_id)
            assert row is not None
            row.tenants = ["northwind"]
            session.add(row)
        narrowed = await stack.client.get("/ui/partials/cases", headers=browser)
        assert mia["id"] not in narrowed.text
        assert (await stack.client.get(f"/ui/cases/{mia['id']}", headers=browser)).status_code == 404
