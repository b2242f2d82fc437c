"""Security: scopes on every route, tokens, rate limits, hostile input, sealing, audit, secret hygiene."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.routing import APIRoute
from sqlalchemy import create_engine, inspect, text
from structlog.testing import capture_logs

from service.cli import main as cli_main
from service.persistence import audit, credentials
from service.persistence.db import sync_url
from service.sandbox.server import SandboxServer
from service.security.sealing import Sealer, SealingError
from tests.stack import Stack, make_key, running_stack

PROBLEM = "application/problem+json"


@pytest.fixture
async def stack(database_url: str, sandbox: SandboxServer) -> AsyncIterator[Stack]:
    async with running_stack(database_url, sandbox) as s:
        yield s


def _flatten(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):  # FastAPI keeps included routers as nodes
            yield from _flatten(route.original_router.routes)


def _routes(stack: Stack) -> list[APIRoute]:
    return [r for r in _flatten(stack.app.routes) if r.path.startswith("/v1")]


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "0" * 26, path)


# --- scopes on every route ----------------------------------------------------------------------------


async def test_every_route_declares_a_scope_and_enforces_it(stack: Stack) -> None:
    """Walk the route table: each /v1 route names its scope; no credentials is 401, another scope is 403."""
    routes = _routes(stack)
    assert len(routes) >= 8
    scopes = {
        r.path + " " + ",".join(sorted(r.methods or [])): (r.openapi_extra or {}).get("x-required-scope")
        for r in routes
    }
    assert all(scopes.values()), f"routes without a declared scope: {[k for k, v in scopes.items() if not v]}"
    spec = (await stack.client.get("/openapi.json")).json()
    for route in routes:
        scope = route.openapi_extra["x-required-scope"]  # type: ignore[index]
        others = sorted({"cases:read", "cases:write", "senders:read", "admin"} - {scope})
        wrong_key = await make_key(stack.runtime, f"not-{scope}", others[:1])
        for method in route.methods or []:
            path = _concrete(route.path)
            anonymous = await stack.client.request(method, path, json={}, headers={"Authorization": ""})
            assert anonymous.status_code == 401, (method, route.path, anonymous.text)
            assert anonymous.headers["content-type"] == PROBLEM
            refused = await stack.client.request(
                method, path, json={}, headers={"Authorization": f"Bearer {wrong_key}"}
            )
            assert refused.status_code == 403, (method, route.path, refused.text)
            assert refused.json()["required_scope"] == scope
            operation = spec["paths"][route.path][method.lower()]
            assert operation.get("security"), f"{method} {route.path} has no security scheme in the OpenAPI"


async def test_revoked_and_expired_keys_are_refused(database_url: str, sandbox: SandboxServer) -> None:
    """A revoked key and an expired key get 401 (a fresh process: no cached lookup)."""
    from service.persistence import keys as key_rows
    from service.security.keys import generate_key

    async with running_stack(database_url, sandbox, worker=False) as stack:
        revoked = await make_key(stack.runtime, "old", ["cases:read"])
        await key_rows.revoke_key(stack.runtime.db, key_id=revoked[:12], actor="test")
        expired = generate_key()
        await key_rows.create_key(
            stack.runtime.db,
            name="expired",
            prefix=expired.prefix,
            key_hash=expired.key_hash,
            scopes=["cases:read"],
            expires_at=datetime.now(UTC) - timedelta(minutes=1),
        )
    async with running_stack(database_url, sandbox, worker=False) as stack:
        for key in (revoked, expired.plaintext):
            response = await stack.client.get("/v1/cases", headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 401
            assert "revoked or expired" in response.json()["detail"]


# --- rate limits ---------------------------------------------------------------------------------------


async def test_rate_limit_per_key(database_url: str, sandbox: SandboxServer) -> None:
    """Over the limit: 429 problem+json with Retry-After; another key is not affected."""
    async with running_stack(database_url, sandbox, worker=False, rate_limit="5/minute") as stack:
        codes = [(await stack.client.get("/v1/cases")).status_code for _ in range(6)]
        assert codes == [200] * 5 + [429]
        limited = await stack.client.get("/v1/cases")
        assert limited.headers["content-type"] == PROBLEM
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        other = await make_key(stack.runtime, "other", ["cases:read"])
        assert (await stack.client.get("/v1/cases", headers={"Authorization": f"Bearer {other}"})).status_code == 200


# --- OIDC ----------------------------------------------------------------------------------------------


class _Jwks:
    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid="k1", use="sig", alg="RS256")
        body = json.dumps({"keys": [jwk]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                return

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/keys"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": "https://login.example/t1/v2.0",
            "aud": "api://unblock",
            "iat": now,
            "exp": now + 600,
            "sub": "app-1",
        }
        payload.update(claims)
        return jwt.encode(payload, self.key, algorithm="RS256", headers={"kid": "k1"})


@pytest.fixture
def jwks() -> Iterator[_Jwks]:
    server = _Jwks()
    yield server
    server.server.shutdown()
    server.server.server_close()


async def test_oidc_tokens_are_a_second_way_in(database_url: str, sandbox: SandboxServer, jwks: _Jwks) -> None:
    """A signed token with the right audience and issuer is accepted with the scopes of its roles claim."""
    oidc = {"oidc_jwks_url": jwks.url, "oidc_issuer": "https://login.example/t1/v2.0", "oidc_audience": "api://unblock"}
    async with running_stack(database_url, sandbox, worker=False, **oidc) as stack:

        async def get(token: str) -> httpx.Response:
            return await stack.client.get("/v1/cases", headers={"Authorization": f"Bearer {token}"})

        assert (await get(jwks.token(roles=["cases:read"], app_displayname="ServiceNow"))).status_code == 200
        assert (await get(jwks.token(roles=["senders:read"]))).status_code == 403
        assert (await get(jwks.token(roles=["cases:read"], aud="api://other"))).status_code == 401
        assert (await get(jwks.token(roles=["cases:read"], iss="https://evil.example"))).status_code == 401
        assert (await get(jwks.token(roles=["cases:read"], exp=int(time.time()) - 3600))).status_code == 401
        unsigned = jwt.encode({"roles": ["cases:read"], "aud": "api://unblock"}, key=None, algorithm="none")
        assert (await get(unsigned)).status_code == 401
        created = await stack.client.post(
            "/v1/cases",
            json={"mailbox": "rob@contoso.com"},
            headers={"Authorization": f"Bearer {jwks.token(roles=['cases:write'], app_displayname='ServiceNow')}"},
        )
        assert created.status_code == 201
        assert created.json()["created_by"] == "ServiceNow"


# --- hostile input --------------------------------------------------------------------------------------

HOSTILE = [
    "rob@contoso.com; Remove-Mailbox -Identity *",
    "rob@contoso.com`; whoami",
    "$(Remove-Mailbox rob)@contoso.com",
    "${env:PATH}@contoso.com",
    "rob@contoso.com|Out-File c:\\x",
    "rob@contoso.com && del *",
    "rob@contoso.com\nRemove-Mailbox",
    "rob@contoso.com\r\n",
    "rob@contoso.com\x00",
    "'rob'@contoso.com",
    '"rob"@contoso.com',
    '"rob@contoso.com"',
    "rob@contoso.com'",
    "ro b@contoso.com",
    " rob@contoso.com",
    "rob@contoso.com ",
    "*@contoso.com",
    "rob*@contoso.com",
    "rob@*.com",
    "?@contoso.com",
    "rob@contoso.com,ann@contoso.com",
    "rob@contoso.com ann@contoso.com",
    "rob@contoso.com;ann@contoso.com",
    "<rob@contoso.com>",
    "Rob <rob@contoso.com>",
    "rob@contoso.com (comment)",
    "(comment)rob@contoso.com",
    "rob@@contoso.com",
    "rob",
    "@contoso.com",
    "rob@",
    "",
    "rob@contoso",
    "rob@-contoso.com",
    "rob@contoso..com",
    "rob..x@contoso.com",
    ".rob@contoso.com",
    "rob.@contoso.com",
    "r" * 65 + "@contoso.com",
    "rob@" + "a" * 250 + ".com",
    "r" * 300 + "@contoso.com",
    "r\u043eb@contoso.com",  # Cyrillic o
    "rob@c\u043entoso.com",  # Cyrillic o in the domain
    "rob@contoso.com\u200b",  # zero-width space
    "\uff52\uff4f\uff42@contoso.com",  # fullwidth
    "rob\u202e@contoso.com",  # right-to-left override
    "rob@xn--contoso-.com",
    "rob@contoso.com#",
    "rob@contoso.com{}",
    "rob[0]@contoso.com",
    "rob@[127.0.0.1]",
    "rob%contoso.com@contoso.com",
    "rob@contoso.com/../../etc",
    "rob@contoso.com\\",
    "@{a=1}@contoso.com",
    "-rob@contoso.com",
    "rob@contoso.com -Confirm:$false",
]


async def test_hostile_mailboxes_are_refused_and_never_reach_the_tenant(stack: Stack) -> None:
    """More than fifty hostile values: each 422, and the call log shows none of them reached the tenant."""
    assert len(HOSTILE) >= 50
    await stack.client.get("/readyz")
    before = len(stack.calls())
    for value in HOSTILE:
        response = await stack.client.post("/v1/cases", json={"mailbox": value})
        assert response.status_code == 422, (value, response.status_code, response.text)
        assert response.headers["content-type"] == PROBLEM
    for value in ("rob@contoso.com", "not a list"):
        response = await stack.client.post("/v1/cases", json={"mailbox": [value]})
        assert response.status_code == 422
    after = stack.calls()[before:]
    reached = [
        c for c in after if c["cmdlet"] not in ("Get-AcceptedDomain", "Connect-ExchangeOnline", "Connect-MgGraph")
    ]
    assert reached == []
    logged = json.dumps(after)
    assert not [v for v in HOSTILE if v and json.dumps(v)[1:-1] in logged]
    listed = (await stack.client.get("/v1/cases")).json()["items"]
    assert listed == []


async def test_unknown_fields_and_wrong_types_are_refused(stack: Stack) -> None:
    """Unknown fields, non-boolean actions and bad ticket text are 422 with the field named."""
    cases = [
        {"mailbox": "rob@contoso.com", "priority": "high"},
        {"mailbox": "rob@contoso.com", "actions": {"reset_password": "yes"}},
        {"mailbox": "rob@contoso.com", "actions": {"format_disk": True}},
        {"mailbox": "rob@contoso.com", "ticket_ref": "INC\n1"},
        {"mailbox": "rob@contoso.com", "ticket_ref": "x" * 129},
    ]
    for body in cases:
        response = await stack.client.post("/v1/cases", json=body)
        assert response.status_code == 422, body
        assert response.json()["errors"][0]["field"]
    not_json = await stack.client.post("/v1/cases", content=b"{not json", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 422


# --- sealing --------------------------------------------------------------------------------------------


def test_sealing_keys_rotate() -> None:
    """Sealed under the old key, opened after rotation; new seals use the new key; a dropped key cannot open."""
    old, new = b"o" * 32, b"n" * 32
    sealed = Sealer([old]).seal("Tmp-Passw0rd!", context="case1")
    rotated = Sealer([new, old])
    assert rotated.open(sealed, context="case1") == "Tmp-Passw0rd!"
    assert rotated.seal("x", context="case2").key_id == rotated.current_key_id != sealed.key_id
    with pytest.raises(SealingError, match="no configured"):
        Sealer([new]).open(sealed, context="case1")
    with pytest.raises(SealingError, match="tampered or moved"):
        rotated.open(sealed, context="another-case")


async def test_an_unrevealed_password_is_destroyed_after_its_ttl(database_url: str, sandbox: SandboxServer) -> None:
    """After UNBLOCK_CREDENTIAL_TTL the sealed password is gone: 410, an event, no ciphertext left."""
    async with running_stack(database_url, sandbox, credential_ttl=0.5) as stack:
        case = await stack.wait_for((await stack.open("ann@contoso.com"))["id"])
        assert case["credential"]["available"] is True
        await asyncio.sleep(0.6)
        assert await credentials.expire(stack.runtime.db, now=datetime.now(UTC)) == 1
        response = await stack.client.post(f"/v1/cases/{case['id']}/credential/reveal")
        assert response.status_code == 410
        assert "expired" in response.json()["detail"] or "destroyed" in response.json()["detail"]
        assert "credential.expired" in [e["type"] for e in await stack.events(case["id"])]
        assert (await stack.get(case["id"]))["credential"]["available"] is False


# --- audit ----------------------------------------------------------------------------------------------


async def test_the_audit_log_records_and_detects_tampering(
    stack: Stack, database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Key creation, approvals, reveals land in the chained log; an edited row is found by `audit verify`."""
    case = await stack.wait_for((await stack.open("ann@contoso.com"))["id"])
    assert (await stack.client.post(f"/v1/cases/{case['id']}/credential/reveal")).status_code == 200
    records = await audit.recent(stack.runtime.db)
    actions = [r.action for r in records]
    assert actions[0] == "api_key.created"
    assert "credential.revealed" in actions
    assert all(r.actor for r in records)
    count, broken = await audit.check(stack.runtime.db)
    assert (count, broken) == (len(records), None)

    monkeypatch.setenv("UNBLOCK_DATABASE_URL", database_url)
    assert await asyncio.to_thread(cli_main, ["audit", "verify"]) == 0
    assert "intact" in capsys.readouterr().out
    engine = create_engine(sync_url(database_url))
    with engine.begin() as connection:
        connection.execute(text("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 1"))
    engine.dispose()
    assert await asyncio.to_thread(cli_main, ["audit", "verify"]) == 1
    assert "broken at record 1" in capsys.readouterr().err


# --- headers --------------------------------------------------------------------------------------------


async def test_pages_carry_security_headers_and_cors_is_off(stack: Stack) -> None:
    """The docs page is not frameable and has a CSP; no CORS headers unless origins are configured."""
    docs = await stack.client.get("/docs")
    assert docs.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in docs.headers["content-security-policy"]
    assert docs.headers["x-content-type-options"] == "nosniff"
    preflight = await stack.client.options(
        "/v1/cases", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers
    api = await stack.client.get("/v1/cases")
    assert api.headers["cache-control"] == "no-store"


# --- secret hygiene ------------------------------------------------------------------------------------


def _database_text(database_url: str) -> str:
    engine = create_engine(sync_url(database_url))
    chunks: list[str] = []
    with engine.connect() as connection:
        for table in inspect(connection).get_table_names():
            for row in connection.execute(text(f'SELECT * FROM "{table}"')):  # noqa: S608 - our own table names
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        chunks.append(bytes(value).decode("latin-1"))
                        chunks.append(base64.b64encode(bytes(value)).decode())
                    else:
                        chunks.append(json.dumps(value, default=str))
    engine.dispose()
    if database_url.startswith("sqlite"):
        path = Path(database_url.removeprefix("sqlite:///"))
        for suffix in ("", "-wal"):
            candidate = Path(f"{path}{suffix}")
            if candidate.exists():
                chunks.append(candidate.read_bytes().decode("latin-1"))
    return "\n".join(chunks)


async def test_the_password_appears_only_in_the_reveal(database_url: str, sandbox: SandboxServer) -> None:
    """A full case and a reveal: the password is in no log line, event, other response, or the database."""
    responses: list[str] = []
    with capture_logs() as logs:
        async with running_stack(database_url, sandbox) as stack:

            async def record(response: httpx.Response) -> None:
                await response.aread()
                if not response.request.url.path.endswith("/credential/reveal"):
                    responses.append(response.text)

            stack.client.event_hooks["response"] = [record]
            case = await stack.wait_for((await stack.open("rob@contoso.com", ticket_ref="INC-HYG"))["id"])
            events = await stack.events(case["id"])
            await stack.client.get("/v1/cases")
            reveal = await stack.client.post(f"/v1/cases/{case['id']}/credential/reveal")
            password = reveal.json()["password"]
            await stack.client.post(f"/v1/cases/{case['id']}/credential/reveal")
            await stack.client.get(f"/v1/cases/{case['id']}")
            await stack.client.get(f"/v1/cases/{case['id']}/events")
    assert len(password) == 20
    assert logs
    assert password not in repr(logs)
    assert password not in json.dumps(events)
    assert responses
    assert not [r for r in responses if password in r]
    assert password not in _database_text(database_url)
    sandbox_log = json.dumps([c.public() for c in sandbox.tenant.calls])
    assert password not in sandbox_log  # the tenant's own call log keeps only hashes
