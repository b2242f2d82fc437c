"""A second way in: OIDC bearer tokens (e.g. Entra ID) checked against a JWKS URL.

The token's signature is checked with the issuer's published keys (cached by PyJWKClient), and
its issuer, audience and expiry are always required and must match the configured ones (the
settings refuse a JWKS URL without both: Entra ID signs every tenant's tokens with the same
keys). With a tenant id configured, Entra's ``tid`` claim must match it too. Scopes come from a
claim (``roles`` for Entra app roles by default, or space-separated ``scp``), keeping only the
service's own scope names. A principal is identified by issuer and subject (Entra's stable
``oid`` where present), never by its display name.

With a tenants claim configured (UNBLOCK_OIDC_TENANTS_CLAIM), every token must name the tenants
its principal may see there, as a key made with ``keys create --tenant`` does: the operator said
tenants come from that claim, so a token without it (or with an empty or malformed one) is
refused rather than taken as unlimited. Such a token cannot carry ``admin`` (admin sees every
tenant), and is refused rather than quietly stripped of it, as ``keys create`` refuses it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import jwt

from service.domain.tenancy import check_name
from service.errors import InvalidInput
from service.security.scopes import ALL_SCOPES, Scope

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384"]
NAME_CLAIMS = ("preferred_username", "upn", "app_displayname", "azp", "appid", "sub")


class TokenRejected(Exception):
    """The bearer token is not valid for this service."""


@dataclass(frozen=True, slots=True)
class TokenIdentity:
    id: str
    name: str
    scopes: frozenset[str]
    subject: str = ""  # who, for the audit log: the issuer and the token's oid (Entra) or sub
    tenants: tuple[str, ...] | None = None  # the tenants it may see; None: every tenant (no tenants claim set)


def audit_subject(claims: dict[str, Any], name: str) -> str:
    """``<iss>|oid:<oid>``, else ``<iss>|sub:<sub>``: stable where display names are not.

    Entra's ``oid`` names the user or service principal across applications, while ``sub`` is
    pairwise (per application); other issuers only have ``sub``. The prefix says which it is.
    """
    issuer = str(claims.get("iss", ""))
    for claim in ("oid", "sub"):
        if claims.get(claim):
            return f"{issuer}|{claim}:{claims[claim]}"[:512]
    return f"{issuer}|name:{name}"[:512]


def tenants_of(claims: dict[str, Any], claim: str) -> tuple[str, ...]:
    """The tenant names in ``claim``: a JSON array of strings, or one space-separated string.

    Refuses (TokenRejected) a missing, empty or malformed claim and any name that is not a
    tenant name: a token meant to be limited must never pass as one that sees every tenant.
    """
    if claim not in claims:
        raise TokenRejected(f"the token has no {claim} claim naming its tenants")
    raw = claims[claim]
    if isinstance(raw, str):
        values = raw.split()
    elif isinstance(raw, list) and all(isinstance(v, str) for v in raw):
        values = list(raw)
    else:
        raise TokenRejected(f"the {claim} claim must be a list of tenant names or a space-separated string")
    names: list[str] = []
    for value in values:
        try:
            name = check_name(value)
        except InvalidInput:
            raise TokenRejected(f"the {claim} claim names an invalid tenant {value[:64]!r}") from None
        if name not in names:
            names.append(name)
    if not names:
        raise TokenRejected(f"the {claim} claim names no tenant")
    return tuple(names)


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


class OidcVerifier:
    def __init__(
        self,
        *,
        jwks_url: str,
        issuer: str,
        audience: str,
        scope_claim: str = "roles",
        tenant_id: str | None = None,
        tenants_claim: str | None = None,
    ) -> None:
        if not issuer or not audience:
            raise ValueError("an OIDC verifier needs both the issuer and the audience")
        self.client = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300, timeout=5)
        self.issuer = issuer
        self.audience = audience
        self.scope_claim = scope_claim
        self.tenant_id = tenant_id.lower() if tenant_id else None
        self.tenants_claim = tenants_claim or None

    def _verify(self, token: str) -> TokenIdentity:
        try:
            key = self.client.get_signing_key_from_jwt(token).key
            options: Any = {"require": ["exp", "iat", "iss", "aud"], "verify_aud": True, "verify_iss": True}
            claims = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                options=options,
                leeway=30,
            )
        except (jwt.PyJWTError, jwt.PyJWKClientError) as error:
            raise TokenRejected(str(error)) from None
        if self.tenant_id is not None and str(claims.get("tid", "")).lower() != self.tenant_id:
            raise TokenRejected("the token was issued for another tenant (tid)")
        subject = claims.get("oid") or claims.get("sub")
        if not subject:
            raise TokenRejected("the token names no subject (sub or oid)")
        raw = claims.get(self.scope_claim, [])
        values = raw.split() if isinstance(raw, str) else [str(v) for v in raw] if isinstance(raw, list) else []
        scopes = frozenset(v for v in values if v in ALL_SCOPES)
        tenants = tenants_of(claims, self.tenants_claim) if self.tenants_claim else None
        if tenants is not None and Scope.admin in scopes:
            raise TokenRejected("a token limited to tenants cannot carry admin (admin sees every tenant)")
        name = next((str(claims[c]) for c in NAME_CLAIMS if claims.get(c)), "oidc")
        return TokenIdentity(
            id=f"oidc:{claims['iss']}:{subject}",
            name=name,
            scopes=scopes,
            subject=audit_subject(claims, name),
            tenants=tenants,
        )

    async def verify(self, token: str) -> TokenIdentity:
        # PyJWKClient fetches keys over HTTP on a cache miss: keep that off the event loop.
        return await asyncio.to_thread(self._verify, token)
