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

from service.errors import Forbidden, RateLimited, Unauthenticated
from service.logging import get_logger
from service.persistence import keys as key_rows
from service.persistence.keys import KeyRecord
from service.runtime import Runtime
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
    kind: str = "api_key"

    @property
    def actor(self) -> str:
        return self.name


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
    return Principal(id=record.id, name=record.name, scopes=frozenset(record.scopes))


async def _from_token(request: Request, token: str) -> Principal | None:
    verifier: OidcVerifier | None = getattr(request.app.state, "oidc", None)
    if verifier is None or not looks_like_jwt(token):
        return None
    try:
        identity = await verifier.verify(token)
    except TokenRejected as error:
        raise Unauthenticated(f"the bearer token is not valid: {error}") from None
    return Principal(id=identity.id, name=identity.name, scopes=identity.scopes, kind="oidc")


def _limit(request: Request, principal: Principal) -> None:
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:
        return
    wait = limiter.hit(principal.id)
    if wait is not None:
        raise RateLimited(wait, f"rate limit of {limiter.item} for this key reached; retry in {wait:.0f}s")


async def authenticate(request: Request, credentials: BearerDep) -> Principal:
    cached: Principal | None = getattr(request.state, "principal_obj", None)
    if cached is not None:
        return cached
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthenticated("send an API key as: Authorization: Bearer <key>")
    token = credentials.credentials.strip()
    principal = await _from_api_key(request, token) or await _from_token(request, token)
    if principal is None:
        raise Unauthenticated("the API key is not valid")
    _limit(request, principal)
    request.state.principal_obj = principal
    request.state.principal = principal.name
    structlog.contextvars.bind_contextvars(principal=principal.name)
    return principal


def requires(scope: str) -> Any:
    """A dependency that admits only principals holding ``scope``."""

    async def check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if scope not in principal.scopes:
            raise Forbidden(f"this operation needs the {scope} scope", required_scope=scope)
        return principal

    check.__name__ = f"requires_{scope.replace(':', '_')}"
    return Depends(check)


def scope_doc(scope: str) -> dict[str, Any]:
    return {"x-required-scope": scope}
