"""A second way in: OIDC bearer tokens (e.g. Entra ID) checked against a JWKS URL.

The token's signature is checked with the issuer's published keys (cached by PyJWKClient), and
its audience, issuer and expiry must match. Scopes come from a claim (``roles`` for Entra app
roles by default, or space-separated ``scp``), keeping only the service's own scope names.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import jwt

from service.security.scopes import ALL_SCOPES

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384"]
NAME_CLAIMS = ("preferred_username", "upn", "app_displayname", "azp", "appid", "sub")


class TokenRejected(Exception):
    """The bearer token is not valid for this service."""


@dataclass(frozen=True, slots=True)
class TokenIdentity:
    id: str
    name: str
    scopes: frozenset[str]


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


class OidcVerifier:
    def __init__(self, *, jwks_url: str, issuer: str | None, audience: str | None, scope_claim: str = "roles") -> None:
        self.client = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300, timeout=5)
        self.issuer = issuer
        self.audience = audience
        self.scope_claim = scope_claim

    def _verify(self, token: str) -> TokenIdentity:
        try:
            key = self.client.get_signing_key_from_jwt(token).key
            options: Any = {
                "require": ["exp", "iat"] + (["iss"] if self.issuer else []),
                "verify_aud": self.audience is not None,
            }
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
        raw = claims.get(self.scope_claim, [])
        values = raw.split() if isinstance(raw, str) else [str(v) for v in raw] if isinstance(raw, list) else []
        scopes = frozenset(v for v in values if v in ALL_SCOPES)
        name = next((str(claims[c]) for c in NAME_CLAIMS if claims.get(c)), "oidc")
        return TokenIdentity(id=f"oidc:{claims.get('iss', '')}:{claims.get('sub', name)}", name=name, scopes=scopes)

    async def verify(self, token: str) -> TokenIdentity:
        # PyJWKClient fetches keys over HTTP on a cache miss: keep that off the event loop.
        return await asyncio.to_thread(self._verify, token)
