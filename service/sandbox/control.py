"""The control API under ``/_sandbox`` (contract section 6): JSON, no auth, loopback only.

Tests and integrators use it to arrange a tenant (users, restricted senders), to turn the
knobs (latency, unblock limit, restore delay, re-blocks), to inject faults, and to read the
call log that proves what reached the tenant.

The sandbox hosts several tenants. Every endpoint that reads or changes one tenant's state
(``state``, ``users``, ``senders``, ``faults``, ``config``) takes ``?tenant=NAME`` (the short
name, e.g. ``fabrikam``; default: the first tenant, contoso); an unknown name is 404. Two
endpoints are the sandbox's rather than one tenant's: ``POST /reset`` without ``?tenant=``
resets the whole sandbox (every tenant, the call log), as it always did, and with it resets that
tenant alone; ``GET``/``DELETE /calls`` read or empty the one call log of every tenant, or, with
``?tenant=``, only that tenant's calls.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.sandbox.shells import ShellRegistry
from service.sandbox.tenant import FAULT_KINDS, Tenant, Tenants, as_tenants

_LOCAL_NAMES = {"localhost", "testclient"}  # the latter: Starlette's in-process test client


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and IPv4 loopback written as an IPv6-mapped address (dual-stack sockets)."""
    if host in _LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


Handler = Callable[[Request], Awaitable[Response]]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


class UnknownTenant(LookupError):
    """``?tenant=`` names no tenant of the sandbox (404)."""


def _guarded(handler: Handler) -> Handler:
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except UnknownTenant as error:
            return _error(404, str(error))
        except ValueError as error:
            return _error(400, str(error))

    return wrapped


def build_control_app(tenants: Tenants | Tenant, registry: ShellRegistry) -> Starlette:
    sandbox = as_tenants(tenants)

    def named(request: Request) -> Tenant | None:
        """The tenant ``?tenant=`` names, or None when the request names none."""
        name = request.query_params.get("tenant")
        if not name:
            return None
        try:
            return sandbox.named(name)
        except ValueError as error:
            raise UnknownTenant(str(error)) from None

    def chosen(request: Request) -> Tenant:
        return named(request) or sandbox.first

    async def state(request: Request) -> Response:
        tenant = chosen(request)
        return JSONResponse({**tenant.snapshot(shells=len(registry)), "tenants": sandbox.describe()})

    async def reset(request: Request) -> Response:
        only = named(request)
        body = await _json(request) if await request.body() else {}
        seed = body.get("seed", "demo")
        if seed not in ("demo", "empty"):
            raise ValueError("seed must be demo or empty")
        if only is None:
            sandbox.reset(seed)
            return JSONResponse({"seed": seed})
        only.reseed(seed)
        return JSONResponse({"seed": seed, "tenant": only.name})

    async def add_user(request: Request) -> Response:
        tenant = chosen(request)
        body = await _json(request)
        upn = body.get("upn")
        if not isinstance(upn, str) or "@" not in upn:
            raise ValueError("upn must be an address like name@contoso.com")
        if tenant.find_user(upn) is not None:
            return _error(409, f"user {upn} exists")
        user = tenant.add_user(
            upn,
            display_name=body.get("display_name"),
            on_premises_sync=bool(body.get("on_premises_sync", False)),
        )
        if body.get("has_mailbox") is False:
            user.has_mailbox = False
        return JSONResponse(user.public(), status_code=201)

    async def get_user(request: Request) -> Response:
        tenant = chosen(request)
        user = tenant.find_user(request.path_params["upn"])
        if user is None:
            return _error(404, "no such user")
        data = user.public()
        can_send, can_send_at = tenant.can_send(user.upn)
        data["can_send"] = can_send
        data["can_send_at"] = can_send_at.isoformat() if can_send_at else None
        return JSONResponse(data)

    async def add_sender(request: Request) -> Response:
        tenant = chosen(request)
        body = await _json(request)
        address = body.get("address")
        if not isinstance(address, str) or "@" not in address:
            raise ValueError("address must be an e-mail address")
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise ValueError("reason must be a string")
        sender = tenant.restrict(address, reason, temporary_block=bool(body.get("temporary_block", False)))
        return JSONResponse(sender.public(), status_code=201)

    async def calls(request: Request) -> Response:
        only = named(request)
        try:
            since = int(request.query_params.get("since", "0") or 0)
        except ValueError:
            raise ValueError("since must be a call's seq (an integer)") from None
        with sandbox.lock:
            items = [c.public() for c in sandbox.log.calls if c.seq > since and (only is None or c.tenant == only.name)]
        return JSONResponse(items)

    async def clear_calls(request: Request) -> Response:
        only = named(request)
        with sandbox.lock:
            sandbox.log.clear(only.name if only is not None else None)
        return Response(status_code=204)

    async def add_fault(request: Request) -> Response:
        tenant = chosen(request)
        body = await _json(request)
        cmdlet, kind, times = body.get("cmdlet"), body.get("kind"), body.get("times", 1)
        if not isinstance(cmdlet, str) or not cmdlet:
            raise ValueError('cmdlet must be a command name or "*"')
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(FAULT_KINDS)}")
        if not isinstance(times, int) or times < 1:
            raise ValueError("times must be a positive integer")
        fault = tenant.add_fault(cmdlet, kind, times)
        return JSONResponse({"cmdlet": fault.cmdlet, "kind": fault.kind, "times": fault.times}, status_code=201)

    async def clear_faults(request: Request) -> Response:
        tenant = chosen(request)
        with tenant.lock:
            tenant.faults.clear()
        return Response(status_code=204)

    async def configure(request: Request) -> Response:
        tenant = chosen(request)
        config = tenant.configure(await _json(request))
        return JSONResponse(
            {
                "latency_ms": config.latency_ms,
                "unblock_limit_per_day": config.unblock_limit_per_day,
                "send_restore_delay_s": config.send_restore_delay_s,
                "reblock_on_unblock": config.reblock_on_unblock,
                "throttle_retry_after_s": config.throttle_retry_after_s,
                "denied_cmdlets": config.denied_cmdlets,
                "forbidden_cmdlets": config.forbidden_cmdlets,
                "graph_permissions": config.graph_permissions,
            }
        )

    routes = [
        Route("/_sandbox/state", _guarded(state), methods=["GET"]),
        Route("/_sandbox/reset", _guarded(reset), methods=["POST"]),
        Route("/_sandbox/users", _guarded(add_user), methods=["POST"]),
        Route("/_sandbox/users/{upn}", _guarded(get_user), methods=["GET"]),
        Route("/_sandbox/senders", _guarded(add_sender), methods=["POST"]),
        Route("/_sandbox/calls", _guarded(calls), methods=["GET"]),
        Route("/_sandbox/calls", _guarded(clear_calls), methods=["DELETE"]),
        Route("/_sandbox/faults", _guarded(add_fault), methods=["POST"]),
        Route("/_sandbox/faults", _guarded(clear_faults), methods=["DELETE"]),
        Route("/_sandbox/config", _guarded(configure), methods=["POST"]),
    ]
    return Starlette(routes=routes)


class LoopbackOnly:
    """The control API changes the tenant at will: refuse it to anything but this machine.

    The peer is ``scope["client"]``, the socket's address: headers such as X-Forwarded-For are
    the client's own claim and are never read here (the sandbox's uvicorn runs without proxy
    headers, so nothing rewrites the client from them either).
    """

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] == "http" and (client is None or not is_loopback(client[0])):
            response = _error(403, "the sandbox control API answers loopback clients only")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
