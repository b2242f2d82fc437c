"""Security: scopes on every route, tokens, rate limits, hostile input, sealing, audit, secret hygiene."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.routing import APIRoute
from sqlalchemy import create_engine, inspect, select, text
from structlog.testing import capture_logs

from service.cli import main as cli_main
from service.domain.audit import key_id as audit_key_id
from service.persistence import audit, credentials
from service.persistence.db import sync_url
from service.sandbox.server import SandboxServer
from service.security.sealing import Sealer, SealingError
from tests.stack import SECRET, Stack, make_key, running_stack

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


async def test_every_route_declares_a_scope_and_enforces_it(database_url: str, sandbox: SandboxServer) -> None:
    """Walk the route table: each /v1 route names its scope; no credentials is 401, another scope is 403.

    (Its many anonymous requests would meet the per-address limit on failed authentications; that
    limit has its own test, so here it is raised.)"""
    async with running_stack(database_url, sandbox, worker=False, auth_failure_limit="10000/minute") as stack:
        await _walk_routes(stack)


async def _walk_routes(stack: Stack) -> None:
    routes = _routes(stack)
    assert len(routes) >= 8
    scopes = {
        r.path + " " + ",".join(sorted(r.methods or [])): (r.openapi_extra or {}).get("x-required-scope")
        for r in routes
    }
    assert all(scopes.values()), f"routes without a declared scope: {[k for k, v in scopes.items() if not v]}"
    spec = (await stack.client.get("/openapi.json")).json()
    wrong_keys: dict[str, str] = {}  # one per scope: key names are unique
    for route in routes:
        scope = route.openapi_extra["x-required-scope"]  # type: ignore[index]
        accepted = {scope, *route.openapi_extra.get("x-also-accepted-scopes", [])}  # type: ignore[union-attr]
        others = sorted({"cases:read", "cases:write", "senders:read", "admin"} - accepted)
        if scope not in wrong_keys:
            wrong_keys[scope] = await make_key(stack.runtime, f"not-{scope}", others[:1])
        wrong_key = wrong_keys[scope]
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
        await key_rows.revoke_key(stack.runtime.db, key_id=revoked[:12], signer=stack.runtime.audit_signer)
        expired = generate_key()
        await key_rows.create_key(
            stack.runtime.db,
            name="expired",
            prefix=expired.prefix,
            key_hash=expired.key_hash,
            scopes=["cases:read"],
            expires_at=datetime.now(UTC) - timedelta(minutes=1),
            signer=stack.runtime.audit_signer,
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


async def test_oidc_pins_issuer_audience_and_tenant(database_url: str, sandbox: SandboxServer, jwks: _Jwks) -> None:
    """Entra ID signs every tenant's tokens with the same keys: another tenant's token (other tid), a token
    without iss or aud, or for another audience is refused; the principal is issuer + subject, not a name."""
    oidc = {
        "oidc_jwks_url": jwks.url,
        "oidc_issuer": "https://login.example/t1/v2.0",
        "oidc_audience": "api://unblock",
        "oidc_tenant_id": "11111111-0000-0000-0000-000000000001",
    }
    async with running_stack(database_url, sandbox, worker=False, **oidc) as stack:

        async def get(token: str) -> int:
            return (await stack.client.get("/v1/cases", headers={"Authorization": f"Bearer {token}"})).status_code

        ours = {"roles": ["cases:read"], "tid": "11111111-0000-0000-0000-000000000001"}
        assert await get(jwks.token(**ours)) == 200
        assert await get(jwks.token(**{**ours, "tid": "22222222-0000-0000-0000-000000000002"})) == 401
        assert await get(jwks.token(roles=["cases:read"])) == 401  # no tid at all
        for missing in ("iss", "aud", "exp"):
            payload = jwt.decode(jwks.token(**ours), options={"verify_signature": False})
            payload.pop(missing)
            stripped = jwt.encode(payload, jwks.key, algorithm="RS256", headers={"kid": "k1"})
            assert await get(stripped) == 401, missing


async def test_oidc_tenants_claim_limits_a_token_to_its_tenants(
    database_url: str, sandbox: SandboxServer, jwks: _Jwks
) -> None:
    """With UNBLOCK_OIDC_TENANTS_CLAIM a token sees only the tenants its claim names (an array or a
    space-separated string), as a key made with --tenant does; a token without the claim, with an
    empty or malformed one, or naming a bad tenant is 401, and so is one that also carries admin."""
    oidc = {
        "oidc_jwks_url": jwks.url,
        "oidc_issuer": "https://login.example/t1/v2.0",
        "oidc_audience": "api://unblock",
        "oidc_tenants_claim": "unblock_tenants",
    }
    async with running_stack(database_url, sandbox, worker=False, **oidc) as stack:
        case = await stack.open("rob@contoso.com")  # the stack's (unlimited) key; tenant default
        assert case["tenant"] == "default"

        async def get(path: str, **claims: Any) -> httpx.Response:
            token = jwks.token(**claims)
            return await stack.client.get(path, headers={"Authorization": f"Bearer {token}"})

        fabrikam = {"roles": ["cases:read"], "unblock_tenants": ["fabrikam"]}
        listed = await get("/v1/cases", **fabrikam)
        assert listed.status_code == 200, listed.text
        assert listed.json()["items"] == []
        assert (await get(f"/v1/cases/{case['id']}", **fabrikam)).status_code == 404
        for both in (["fabrikam", "default"], "fabrikam default", " Default "):
            seen = await get("/v1/cases", roles=["cases:read"], unblock_tenants=both)
            assert [c["id"] for c in seen.json()["items"]] == [case["id"]], both
            assert (await get(f"/v1/cases/{case['id']}", roles=["cases:read"], unblock_tenants=both)).status_code == 200

        refused: list[tuple[dict[str, Any], str]] = [
            ({"roles": ["cases:read"]}, "no unblock_tenants claim"),
            ({"roles": ["cases:read"], "unblock_tenants": []}, "names no tenant"),
            ({"roles": ["cases:read"], "unblock_tenants": "  "}, "names no tenant"),
            ({"roles": ["cases:read"], "unblock_tenants": ["Bad_Name"]}, "invalid tenant"),
            ({"roles": ["cases:read"], "unblock_tenants": [7]}, "must be a list of tenant names"),
            ({"roles": ["cases:read"], "unblock_tenants": {"fabrikam": True}}, "must be a list of tenant names"),
            ({"roles": ["cases:read"], "unblock_tenants": None}, "must be a list of tenant names"),
            ({"roles": ["admin", "cases:read"], "unblock_tenants": ["fabrikam"]}, "cannot carry admin"),
        ]
        for claims, detail in refused:
            response = await get("/v1/cases", **claims)
            assert response.status_code == 401, claims
            assert response.json()["type"] == "/problems/unauthenticated"
            assert detail in response.json()["detail"], (claims, response.json())


async def test_without_the_tenants_claim_setting_tokens_see_every_tenant(
    database_url: str, sandbox: SandboxServer, jwks: _Jwks
) -> None:
    """Unset (the default), a claim of that name in a token means nothing: tokens are not limited."""
    oidc = {"oidc_jwks_url": jwks.url, "oidc_issuer": "https://login.example/t1/v2.0", "oidc_audience": "api://unblock"}
    async with running_stack(database_url, sandbox, worker=False, **oidc) as stack:
        case = await stack.open("rob@contoso.com")
        token = jwks.token(roles=["cases:read", "admin"], unblock_tenants=["fabrikam"])
        seen = await stack.client.get("/v1/cases", headers={"Authorization": f"Bearer {token}"})
        assert [c["id"] for c in seen.json()["items"]] == [case["id"]]


@pytest.mark.parametrize("missing", ["UNBLOCK_OIDC_ISSUER", "UNBLOCK_OIDC_AUDIENCE"])
def test_a_jwks_url_without_issuer_and_audience_is_refused_at_start(
    missing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refusing to start beats accepting every Entra tenant's tokens: one line naming what is missing."""
    from service.config import SettingsError, load_settings

    monkeypatch.setenv("UNBLOCK_OIDC_JWKS_URL", "https://login.microsoftonline.com/common/discovery/v2.0/keys")
    for name in ("UNBLOCK_OIDC_ISSUER", "UNBLOCK_OIDC_AUDIENCE"):
        if name != missing:
            monkeypatch.setenv(name, "x")
    with pytest.raises(SettingsError, match=f"^{missing}: required with UNBLOCK_OIDC_JWKS_URL"):
        load_settings()


async def test_failed_authentications_are_limited_per_client_address(database_url: str, sandbox: SandboxServer) -> None:
    """Guessing keys: after the limit of failures an address gets 429 with Retry-After. Behind a trusted
    proxy each client has its own bucket; from an untrusted peer, X-Forwarded-For changes nothing."""
    options = {"auth_failure_limit": "3/minute", "trusted_proxies": ["127.0.0.0/8"]}
    async with running_stack(database_url, sandbox, worker=False, **options) as stack:

        async def attempt(client: str, key: str = "ubk_aaaaaaaa_" + "x" * 43) -> httpx.Response:
            headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": client}
            return await stack.client.get("/v1/cases", headers=headers)

        assert [(await attempt("198.51.100.1")).status_code for _ in range(3)] == [401, 401, 401]
        blocked = await attempt("198.51.100.1")
        assert blocked.status_code == 429
        assert int(blocked.headers["retry-after"]) >= 1
        assert (await attempt("198.51.100.1", stack.key)).status_code == 429  # the address is locked out
        assert (await attempt("198.51.100.2")).status_code == 401  # another client behind the proxy
        assert (await attempt("198.51.100.2", stack.key)).status_code == 200
    async with running_stack(database_url, sandbox, worker=False, auth_failure_limit="3/minute") as stack:
        for client in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):  # ignored: the peer is not trusted
            headers = {"Authorization": "Bearer nope", "X-Forwarded-For": client}
            assert (await stack.client.get("/v1/cases", headers=headers)).status_code == 401
        assert (await stack.client.get("/v1/cases", headers={"X-Forwarded-For": "192.0.2.1"})).status_code == 429


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
    report = await audit.check(stack.runtime.db, signer=stack.runtime.audit_signer)
    assert (report.count, report.broken) == (len(records), None)

    monkeypatch.setenv("UNBLOCK_DATABASE_URL", database_url)
    monkeypatch.setenv("UNBLOCK_SECRET_KEY", SECRET)
    assert await asyncio.to_thread(cli_main, ["audit", "verify"]) == 0
    assert "intact" in capsys.readouterr().out
    engine = create_engine(sync_url(database_url))
    with engine.begin() as connection:
        connection.execute(text("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 1"))
    engine.dispose()
    assert await asyncio.to_thread(cli_main, ["audit", "verify"]) == 1
    assert "broken at record 1" in capsys.readouterr().err


def _rewrite_chain(
    database_url: str,
    change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
    sign: Callable[[str, dict[str, Any]], dict[str, str]],
    *,
    start: int = 1,
) -> None:
    """Rewrite the audit log as someone with write access to the database would: change the rows,
    then recompute the links from record ``start`` on with ``sign(previous, row)``."""
    from service.persistence.models import AuditRecord

    table = AuditRecord.__table__
    engine = create_engine(sync_url(database_url))
    with engine.begin() as connection:
        rows = [dict(r._mapping) for r in connection.execute(select(table).order_by(table.c.seq))]
        connection.execute(table.delete())
        previous = "0" * 64
        for row in change(rows):
            if row["seq"] >= start:
                row["prev_hash"] = previous
                row.update(sign(previous, row))
            previous = row["hash"]
            connection.execute(table.insert().values(**row))
    engine.dispose()


def _public_canonical(row: dict[str, Any]) -> bytes:
    """The chain's canonical form, which is no secret (this repository publishes it)."""
    fields = {k: row[k] for k in ("seq", "actor", "action", "target", "detail")} | {"at": row["at"].isoformat()}
    fields |= {k: row[k] for k in ("actor_kind", "actor_id") if k in row}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str).encode()


def _plain_sha256(previous: str, row: dict[str, Any]) -> dict[str, str]:
    return {"hash": hashlib.sha256(previous.encode() + b"\n" + _public_canonical(row)).hexdigest()}


def _hmac_with(key: bytes, *, key_id: str | None = None) -> Callable[[str, dict[str, Any]], dict[str, str]]:
    def sign(previous: str, row: dict[str, Any]) -> dict[str, str]:
        mac = hmac.new(key, previous.encode() + b"\n" + _public_canonical(row), hashlib.sha256).hexdigest()
        return {"hash": mac, "key_id": key_id or audit_key_id(key)}

    return sign


def _verify(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli_main(["audit", "verify", *argv])
    captured = capsys.readouterr()
    return code, captured.err or captured.out


def _three_keys_by_cli(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNBLOCK_DATABASE_URL", database_url)
    monkeypatch.setenv("UNBLOCK_SECRET_KEY", SECRET)
    for name in ("servicenow", "jira", "dashboard"):
        assert cli_main(["keys", "create", "--name", name, "--scope", "cases:read"]) == 0


def test_a_record_deleted_and_the_chain_recomputed_without_the_key_is_detected(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Delete record 2, renumber the rest and recompute every link with plain SHA-256 (all that a database
    writer without the audit key can do): `audit verify` fails, in one line, at the first record rewritten."""
    _three_keys_by_cli(database_url, monkeypatch)
    assert _verify([], capsys)[0] == 0
    _rewrite_chain(
        database_url, lambda rows: [rows[0], *[r | {"seq": r["seq"] - 1} for r in rows[2:]]], _plain_sha256, start=2
    )
    code, err = _verify([], capsys)
    assert code == 1, err
    assert err.count("\n") == 1
    assert err.startswith("unblock: error: audit log broken at record 2: its content does not match its MAC"), err


def test_an_edited_record_re_signed_with_a_wrong_key_is_detected(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Edit record 2's actor and re-sign the chain from there with a key of one's own: whether the records
    carry that key's id or claim the real one, `audit verify` names record 2 (re-signing with the real key,
    the control, verifies: the forgery fails for want of the key, not of the format)."""
    from service.config import derive_audit_key, load_settings

    _three_keys_by_cli(database_url, monkeypatch)
    real = load_settings().audit_keys[0]

    def edit(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r | {"actor": "someone-else"} if r["seq"] == 2 else r for r in rows]

    _rewrite_chain(database_url, edit, _hmac_with(real), start=2)
    assert _verify([], capsys)[0] == 0, "control: the test's canonical form is the service's"
    wrong = derive_audit_key(b"\x07" * 32)
    _rewrite_chain(database_url, edit, _hmac_with(wrong), start=2)
    code, err = _verify([], capsys)
    assert code == 1
    assert "broken at record 2: it is signed with audit key id" in err, err
    assert "none of the configured keys" in err
    _rewrite_chain(database_url, edit, _hmac_with(wrong, key_id=audit_key_id(real)), start=2)
    code, err = _verify([], capsys)
    assert code == 1
    assert "broken at record 2: its content does not match its MAC" in err, err


async def test_records_name_the_principal_kind_and_id(database_url: str, sandbox: SandboxServer, jwks: _Jwks) -> None:
    """Beside the display name, each record says what acted and its stable id: an API key's id, a token's
    issuer and oid (else sub); two principals sharing a name stay apart."""
    from service.persistence import keys as key_rows

    oidc = {"oidc_jwks_url": jwks.url, "oidc_issuer": "https://login.example/t1/v2.0", "oidc_audience": "api://unblock"}
    async with running_stack(database_url, sandbox, worker=False, **oidc) as stack:
        body = {"url": "https://93.184.215.14/a", "events": ["*"]}  # a public address: no DNS question
        by_key = await stack.client.post("/v1/webhooks", json=body)
        assert by_key.status_code == 201, by_key.text
        for claims in ({"oid": "8d2c-oid"}, {}):
            token = jwks.token(roles=["admin"], app_displayname="servicedesk", **claims)
            response = await stack.client.post("/v1/webhooks", json=body, headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 201, response.text
        records = [r for r in await audit.recent(stack.runtime.db) if r.action == "webhook.created"]
        key = await key_rows.find_by_prefix(stack.runtime.db, prefix=stack.key[:12])
        assert key is not None
        assert [(r.actor, r.actor_kind, r.actor_id) for r in records] == [
            ("servicedesk", "api_key", key.id),
            ("servicedesk", "oidc", "https://login.example/t1/v2.0|oid:8d2c-oid"),
            ("servicedesk", "oidc", "https://login.example/t1/v2.0|sub:app-1"),
        ]
        created = [r for r in await audit.recent(stack.runtime.db) if r.action == "api_key.created"]
        assert (created[0].actor_kind, created[0].actor_id) == ("service", "system")


async def test_api_key_names_are_unique(stack: Stack) -> None:
    """A second key with a taken name is refused (even when both creates race: the unique index decides),
    and the refused create leaves no audit record."""
    from service.errors import ApiKeyNameTaken

    before = len(await audit.recent(stack.runtime.db, limit=1000))
    results = await asyncio.gather(
        *(make_key(stack.runtime, "servicenow", ["cases:read"]) for _ in range(3)), return_exceptions=True
    )
    assert sum(isinstance(r, str) for r in results) == 1, results
    assert all(isinstance(r, ApiKeyNameTaken) for r in results if not isinstance(r, str)), results
    with pytest.raises(ApiKeyNameTaken, match="'servicedesk' already exists"):
        await make_key(stack.runtime, "servicedesk", ["cases:read"])
    assert len(await audit.recent(stack.runtime.db, limit=1000)) == before + 1
    report = await audit.check(stack.runtime.db, signer=stack.runtime.audit_signer)
    assert report.broken is None


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
