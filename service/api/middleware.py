"""Plain ASGI middleware: request context and one log line per request, body size limit, headers.

Written against raw ASGI rather than BaseHTTPMiddleware so that streaming responses (SSE)
pass through untouched and the per-request cost stays small.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.api.problems import problem_response
from service.logging import get_logger

log = get_logger("service.api")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class RequestContextMiddleware:
    """Binds ``request_id`` for every log line of the request and writes the canonical line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                path = scope.get("path", "")
                route = getattr(scope.get("route"), "path", None) or "<unmatched>"
                elapsed = time.perf_counter() - started
                method = str(scope.get("method", ""))
                metrics.HTTP_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
                metrics.HTTP_DURATION.labels(method=method, route=route).observe(elapsed)
                if not path.startswith(("/healthz", "/metrics")):
                    state: dict[str, Any] = scope.get("state", {})
                    log.info(
                        "request_handled",
                        method=scope.get("method"),
                        path=path,
                        status=status,
                        duration_ms=round((time.perf_counter() - started) * 1000, 2),
                        principal=state.get("principal"),
                        case_id=state.get("case_id"),
                    )


class DeadlineMiddleware:
    """A request that has not begun its answer within ``seconds`` answers 503 with Retry-After.

    API requests wait on the database, and a frozen database server answers nothing: not the
    query, not a cancel. So the request's work runs as a task of its own; at the deadline the
    client gets the ``unavailable`` problem naming the database, and the task is cancelled but
    not awaited (psycopg then cancels on the server and, failing that, drops the connection in
    the background). Once a response has started (a live stream), no deadline applies.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") == "/healthz":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        # Settled by whichever comes first: the answer begins, the work ends, the deadline passes.
        # One future, a callback and a timer: cheaper per request than waiting on a second task.
        settled: asyncio.Future[None] = loop.create_future()
        began = abandoned = False

        def settle(*_: object) -> None:
            if not settled.done():
                settled.set_result(None)

        async def guarded(message: Message) -> None:
            nonlocal began
            if abandoned:
                return  # the client already has its 503
            if message["type"] == "http.response.start":
                began = True
                settle()
            await send(message)

        work: asyncio.Future[None] = asyncio.ensure_future(self.app(scope, receive, guarded))
        work.add_done_callback(settle)
        timer = loop.call_later(self.seconds, settle)
        try:
            await settled
        except asyncio.CancelledError:
            work.cancel()  # the server is stopping or the client left: the request's work goes too
            raise
        finally:
            timer.cancel()
        if work.done() or began:
            await work
            return
        abandoned = True
        work.cancel()
        work.add_done_callback(_consume)
        log.warning("request_deadline_passed", path=scope.get("path"), seconds=self.seconds)
        response = problem_response(
            status=503,
            code="unavailable",
            title="Service unavailable",
            detail=f"the database did not answer within {self.seconds:g}s",
            instance=scope.get("path"),
            request_id=scope.get("state", {}).get("request_id"),
        )
        await response(scope, receive, send)


def _consume(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413, whether or not Content-Length was sent."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            status=413,
            code="payload_too_large",
            title="Request body too large",
            detail=f"the body must not exceed {self.max_bytes} bytes",
            instance=scope.get("path"),
            request_id=scope.get("state", {}).get("request_id"),
        )
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


class SecurityHeadersMiddleware:
    """Headers that keep the dashboard and the docs from being framed or sniffed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        is_page = path.startswith(("/ui", "/docs"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
                if path.startswith("/v1") and not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                if is_page:
                    headers += [
                        (b"x-frame-options", b"DENY"),
                        (b"content-security-policy", _CSP),
                        (b"cross-origin-opener-policy", b"same-origin"),
                    ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


# One policy for the dashboard and /docs: Swagger UI's bundle, stylesheet and start-up script are
# served from this origin (service.api.docs), so neither page needs a CDN or inline script.
_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
