"""An httpx transport that connects only to addresses the destination check allowed.

Checking a URL and then handing it to an ordinary client is not enough: the client resolves the
name again when it connects, and a name whose DNS answer changed in between (rebinding, or a TTL
of zero) would reach whatever the second answer says. So this transport resolves through
:func:`~service.security.destinations.check_destination` and sends the request to one of the
addresses that check returned, the way httpx documents connecting to an explicit IP: the URL
carries the address, the ``Host`` header keeps the name, and the ``sni_hostname`` extension makes
TLS send the name as SNI and verify the certificate against it.

Connections are not kept alive: the pool below is keyed by address, so a kept connection
verified for one name could otherwise carry a request for another name on the same address.
Proxies from the environment are ignored (``trust_env=False``): through a proxy, the proxy would
resolve the name, out of this check's sight.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

import httpx

from service.security.destinations import DestinationPolicy, Resolver, check_destination

DEFAULT_PORTS = {"http": 80, "https": 443}


class CheckedDestinationTransport(httpx.AsyncBaseTransport):
    """Resolve, check, connect to a checked address; the request keeps its name for Host and TLS."""

    def __init__(
        self,
        *,
        policy: Callable[[], DestinationPolicy],
        resolver: Callable[[], Resolver],
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        # Callables, read per request: the runtime's settings and resolver are the truth at send time.
        self._policy = policy
        self._resolver = resolver
        self._inner = httpx.AsyncHTTPTransport(
            verify=verify, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        host = url.raw_host.decode("ascii")
        destination = await check_destination(
            url.scheme,
            host,
            url.port or DEFAULT_PORTS.get(url.scheme, 0),
            policy=self._policy(),
            resolve=self._resolver(),
        )
        failure: httpx.ConnectError | None = None
        for address in destination.addresses:
            pinned = httpx.Request(
                request.method,
                url.copy_with(host=str(address)),
                headers=request.headers,  # Host: the name, set when the request was built
                stream=request.stream,
                extensions={**request.extensions, "sni_hostname": host},
            )
            try:
                return await self._inner.handle_async_request(pinned)
            except httpx.ConnectError as error:  # nothing was sent: the next address may answer
                if _is_tls(error):
                    raise
                failure = error
        assert failure is not None  # check_destination returns at least one address
        raise failure

    async def aclose(self) -> None:
        await self._inner.aclose()


def _is_tls(error: BaseException) -> bool:
    """Whether TLS (handshake, certificate) is what failed, anywhere in the exception's chain."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):  # certificate errors included
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def failure_category(error: BaseException) -> str:
    """The stored name of a failed delivery attempt (see ``persistence.webhooks.DELIVERY_ERRORS``)."""
    if isinstance(error, httpx.TimeoutException):
        return "timeout"
    if _is_tls(error):
        return "tls"
    return "connect_failed"
