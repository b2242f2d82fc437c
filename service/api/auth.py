"""Who is calling, and may they: bearer API keys with scopes.

Keys are looked up by their visible prefix and compared by hash in constant time. Lookups are
cached for a few seconds so that a dashboard polling the API does not turn every read into a
database query; a revoked key stops working within that time. Last use is recorded at most
once a minute per key, in the background.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.domain.audit import Actor, ActorKind
from service.domain.tenancy import visible
from service.errors import Forbidden, RateLimited, Unauthenticated
from service.logging import get_logger
from service.persistence import keys as key_rows
from service.persistence.keys import KeyRecord
from service.runtime import Runtime
from service.security.clients import Origin, origin
from service.security.keys import matches, prefix_of
from service.security.oidc import OidcVerifier, TokenRejected, looks_like_jwt
from service.security.ratelimit import RateLimiter

log = get_logger(__name__)

CACHE_SECONDS = 5.0

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key (`unblock keys create`), sent as `Authorization: Bearer ubk_...`.",
)


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    name: str
    scopes: frozenset[str]
    kind: str = ActorKind.api_key
    subject: str | None = None  # for the audit log when ``id`` is not it (OIDC: issuer and oid/sub)
    tenants: tuple[str, ...] | None = None  # the tenants it may see; None: every tenant

    def sees(self, tenant: str | None) -> bool:
        return visible(tenant, self.tenants)

    @property
    def actor(self) -> str:
        return self.name

    @property
    def audit_actor(self) -> Actor:
        """Who, in the audit log: the kind and a stable id (API key id, token issuer and subject) beside the name."""
        return Actor(kind=self.kind, id=self.subject or self.id, name=self.name)


class KeyCache:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, KeyRecord | None]] = {}
        self._touched: dict[str, float] = {}

    def get(self, prefix: str) -> tuple[bool, KeyRecord | None]:
        entry = self._entries.get(prefix)
        if entry is None or time.monotonic() - entry[0] > CACHE_SECONDS:
            return False, None
        return True, entry[1]

    def put(self, prefix: str, record: KeyRecord | None) -> None:
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[prefix] = (time.monotonic(), record)

    def should_touch(self, key_id: str) -> bool:
        last = self._touched.get(key_id, 0.0)
        if time.monotonic() - last < 60:
            return False
        self._touched[key_id] = time.monotonic()
        return True


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _cache(request: Request) -> KeyCache:
    cache: KeyCache | None = getattr(request.app.state, "key_cache", None)
    if cache is None:
        cache = request.app.state.key_cache = KeyCache()
    return cache


async def _record(request: Request, prefix: str) -> KeyRecord | None:
    cache = _cache(request)
    hit, record = cache.get(prefix)
    if not hit:
        record = await key_rows.find_by_prefix(_runtime(request).db, prefix=prefix)
        cache.put(prefix, record)
    return record


def _touch_later(runtime: Runtime, cache: KeyCache, record: KeyRecord) -> None:
    if not cache.should_touch(record.id):
        return

    async def touch() -> None:
        try:
            await key_rows.touch(runtime.db, key_id=record.id, now=runtime.clock())
        except Exception as error:  # noqa: BLE001 - bookkeeping must never fail a request
            log.warning("key_touch_failed", error_class=type(error).__name__)

    task = asyncio.get_running_loop().create_task(touch())
    runtime.background.add(task)
    task.add_done_callback(runtime.background.discard)


BearerDep = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


async def _from_api_key(request: Request, token: str) -> Principal | None:
    prefix = prefix_of(token)
    if prefix is None:
        return None
    record = await _record(request, prefix)
    runtime = _runtime(request)
    if record is None or not matches(token, record.key_hash):
        raise Unauthenticated("the API key is not valid")
    if not record.usable(runtime.clock()):
        raise Unauthenticated("the API key is revoked or expired")
    _touch_later(runtime, _cache(request), record)
    return Principal(id=record.id, name=record.name, scopes=frozenset(record.scopes), tenants=record.tenants)


async def _from_token(request: Request, token: str) -> Principal | None:
    verifier: OidcVerifier | None = getattr(request.app.state, "oidc", None)
    if verifier is None or not looks_like_jwt(token):
        return None
    try:
        identity = await verifier.verify(token)
    except TokenRejected as error:
        raise Unauthenticated(f"the bearer token is not valid: {error}") from None
    return Principal(
        id=identity.id,
        name=identity.name,
        scopes=identity.scopes,
        kind=ActorKind.oidc,
        subject=identity.subject,
        tenants=identity.tenants,
    )


async def still_valid(request: Request) -> bool:
    """Would this request's credential be accepted now? For long-lived streams, re-checked as they run.

    Reads the key afresh (not from the few-seconds cache), so a revocation ends a stream at its
    next check; a token is verified again, so an expired one ends it too.
    """
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return False
    try:
        prefix = prefix_of(token)
        if prefix is not None:
            runtime = _runtime(request)
            record = await key_rows.find_by_prefix(runtime.db, prefix=prefix)
            return record is not None and matches(token, record.key_hash) and record.usable(runtime.clock())
        return await _from_token(request, token) is not None
    except Unauthenticated:
        return False


async def _principal(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthenticated("send an API key as: Authorization: Bearer <key>")
    token = credentials.credentials.strip()
    principal = await _from_api_key(request, token) or await _from_token(request, token)
    if principal is None:
        raise Unauthenticated("the API key is not valid")
    return principal


def _limit(request: Request, principal: Principal) -> None:
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:
        return
    wait = limiter.hit(principal.id)
    if wait is not None:
        raise RateLimited(wait, f"rate limit of {limiter.item} for this key reached; retry in {wait:.0f}s")


def client_origin(request: Request) -> Origin:
    """The client's address and scheme; proxy headers count only from UNBLOCK_TRUSTED_PROXIES."""
    trusted = getattr(request.app.state, "trusted_proxies", ())
    peer = request.client.host if request.client else None
    return origin(peer, request.url.scheme, request.headers, trusted)


def _failure_limiter(request: Request) -> RateLimiter | None:
    limiter: RateLimiter | None = getattr(request.app.state, "auth_failures", None)
    return limiter


def refuse_after_failures(request: Request) -> None:
    """429 for an address that failed to authenticate too often (guessing keys), before it tries again."""
    limiter = _failure_limiter(request)
    if limiter is None:
        return
    wait = limiter.exceeded(client_origin(request).address)
    if wait is not None:
        raise RateLimited(wait, f"too many failed authentications from this address; retry in {wait:.0f}s")


def count_failure(request: Request) -> None:
    limiter = _failure_limiter(request)
    if limiter is not None:
        limiter.record(client_origin(request).address)


async def authenticate(request: Request, credentials: BearerDep) -> Principal:
    cached: Principal | None = getattr(request.state, "principal_obj", None)
    if cached is not None:
        return cached
    refuse_after_failures(request)
    try:
        principal = await _principal(request, credentials)
    except Unauthenticated:
        count_failure(request)
        raise
    _limit(request, principal)
    request.state.principal_obj = principal
    request.state.principal = principal.name
    structlog.contextvars.bind_contextvars(principal=principal.name)
    return principal


def requires(scope: str, *also: str) -> Any:
    """A dependency that admits only principals holding ``scope`` (or one of the ``also`` scopes)."""

    async def check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if scope not in principal.scopes and principal.scopes.isdisjoint(also):
            alternatives = f" (or {' or '.join(also)})" if also else ""
            raise Forbidden(f"this operation needs the {scope} scope{alternatives}", required_scope=scope)
        return principal

    check.__name__ = f"requires_{scope.replace(':', '_')}"
    return Depends(check)


def scope_doc(scope: str, *also: str) -> dict[str, Any]:
    return {"x-required-scope": scope, **({"x-also-accepted-scopes": list(also)} if also else {})}
