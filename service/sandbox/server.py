"""Running the sandbox: the ASGI app, TLS, and a server that runs in the foreground or a thread.

``unblock sandbox`` runs it in the foreground; ``unblock serve --sandbox``, the tests and the
benchmarks run it in a thread of their own process with :meth:`SandboxServer.start`, and can
stop and start it again on the same port with its tenant state kept (an outage).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.types import Receive, Scope, Send

from service.sandbox.control import LoopbackOnly, build_control_app
from service.sandbox.endpoint import WSManEndpoint
from service.sandbox.shells import ShellRegistry
from service.sandbox.tenant import Call, Tenant, Tenants, as_tenants

USERNAME = "sandbox"
PASSWORD = "sandbox"  # noqa: S105 - the sandbox's documented, public credential


class SandboxError(RuntimeError):
    """The sandbox could not start (port in use, bad address)."""


def bind(host: str, port: int) -> socket.socket:
    """Listen before uvicorn starts, so a busy port is one clear error and port 0 is known at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off only on sockets that say they are TCP, and with
    # Nagle on, every response waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise SandboxError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.set_inheritable(True)
    return sock


class _DropNoise(logging.Filter):
    """The drop_connection fault makes uvicorn say so; that line is expected, not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "returned without completing response" not in record.getMessage()


class SandboxApp:
    """``/wsman`` for PSRP clients, ``/_sandbox`` for tests and integrators."""

    def __init__(
        self,
        tenants: Tenants | Tenant,
        *,
        path: str = "wsman",
        username: str = USERNAME,
        password: str = PASSWORD,
    ):
        self.tenants = as_tenants(tenants)
        self.registry = ShellRegistry(self.tenants)
        self.path = "/" + path.strip("/")
        self.wsman = WSManEndpoint(self.registry, username=username, password=password)
        self.control = LoopbackOnly(build_control_app(self.tenants, self.registry))
        self._reaper: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == self.path:
            await self.wsman(scope, receive, send)
        elif path.startswith("/_sandbox/"):
            await self.control(scope, receive, send)
        else:
            await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.loop = asyncio.get_running_loop()
                self._reaper = asyncio.get_running_loop().create_task(self._reap())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._reaper:
                    self._reaper.cancel()
                self.registry.close_all()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _reap(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(30)
                self.registry.reap_idle()


def make_certificate(directory: Path, host: str) -> tuple[Path, Path]:
    """A self-signed certificate for localhost, 127.0.0.1, ::1 and ``host``."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for address in {"127.0.0.1", "::1", host}:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            names.append(x509.DNSName(address))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unblock-sandbox")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "sandbox-cert.pem", directory / "sandbox-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


class SandboxServer:
    """The sandbox's tenants listening on ``host:port`` (port 0 picks a free one).

    ``tenant`` is the first (default) tenant, contoso; ``tenants`` every tenant by short name
    (``tenants["fabrikam"]``, or :meth:`tenant_named`); ``calls`` the one call log of them all.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: bool = False,
        seed: str = "demo",
        tenant: Tenant | None = None,
        path: str = "wsman",
        log_level: str | None = None,
        tenants: Tenants | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.path = path
        self.tenants = tenants or (as_tenants(tenant) if tenant is not None else Tenants(seed))
        self.log_level = log_level
        self.app = SandboxApp(self.tenants, path=path)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="unblock-sandbox-") if tls else None
        self.cert_path: Path | None = None
        self._key_path: Path | None = None
        if self._tmp is not None:
            self.cert_path, self._key_path = make_certificate(Path(self._tmp.name), host)
        logging.getLogger("uvicorn.error").addFilter(_DropNoise())

    @property
    def tenant(self) -> Tenant:
        """The first tenant (contoso): the one ``UnblockRunner`` and a control request without ``?tenant=`` serve."""
        return self.tenants.first

    def tenant_named(self, name: str) -> Tenant:
        """A tenant by short name (``"fabrikam"``); ValueError for one the sandbox does not have."""
        return self.tenants.named(name)

    @property
    def calls(self) -> list[Call]:
        """Every call the sandbox received, of every tenant, in order (each names its tenant and runspace)."""
        return self.tenants.calls

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/{self.path}"

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def _config(self) -> uvicorn.Config:
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_config=None,
            log_level=self.log_level,
            access_log=False,
            lifespan="on",
            timeout_keep_alive=120,
            # The control API trusts loopback peers (LoopbackOnly): the peer must be the socket's,
            # never what an X-Forwarded-For or Forwarded header claims, whatever FORWARDED_ALLOW_IPS says.
            proxy_headers=False,
            ssl_certfile=str(self.cert_path) if self.cert_path else None,
            ssl_keyfile=str(self._key_path) if self._key_path else None,
        )
        return config

    def _listen(self) -> socket.socket:
        sock = bind(self.host, self.port)
        self.port = int(sock.getsockname()[1])
        return sock

    def start(self, timeout: float = 10.0) -> SandboxServer:
        """Serve from a background thread; returns once the port accepts connections."""
        sock = self._listen()
        server = uvicorn.Server(self._config())
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="unblock-sandbox", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive():
                raise SandboxError(f"the sandbox stopped while starting on {self.host}:{self.port}")
            if time.monotonic() > deadline:
                raise SandboxError("the sandbox did not start in time")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        self._server = None
        self._thread = None

    def restart(self) -> None:
        """Start again on the same port, with the same tenant state (after an outage)."""
        self.app = SandboxApp(self.tenants, path=self.path)
        self.start()

    @property
    def shells(self) -> int:
        return len(self.app.registry)

    def close_shells(self, timeout: float = 5.0) -> int:
        """Close every open shell from the server's own loop; returns how many there were."""
        loop = self.app.loop
        if loop is None or self._server is None:
            return 0

        async def close_all() -> int:
            count = len(self.app.registry)
            self.app.registry.close_all()
            return count

        return asyncio.run_coroutine_threadsafe(close_all(), loop).result(timeout)

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    async def serve_forever(self, on_ready: object = None) -> None:
        """Serve in the caller's event loop (``unblock sandbox``)."""
        sock = self._listen()
        server = uvicorn.Server(self._config())
        self._server = server
        serving = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started:
            if serving.done():
                await serving
                raise SandboxError(f"the sandbox stopped while starting on {self.host}:{self.port}")
            await asyncio.sleep(0.005)
        if callable(on_ready):
            on_ready(self)
        await serving


@contextlib.asynccontextmanager
async def running(server: SandboxServer) -> AsyncIterator[SandboxServer]:
    server.start()
    try:
        yield server
    finally:
        server.close()
