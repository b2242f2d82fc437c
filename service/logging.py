"""structlog set-up: one configuration for the API, the worker and the CLI.

Lines are JSON when stderr is not a terminal (what a log shipper wants) and coloured key=value
on a terminal. Context travels in contextvars (``request_id``, ``case_id``, ``worker_id``),
bound by the request middleware and the worker, so every line of a request or a step carries
them without passing loggers around. The redaction processor runs last before rendering, so
no code path can log a secret by accident: any key that looks secret is replaced, and any
value equal to a registered secret (a temporary password in flight) is masked wherever it
appears.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "[redacted]"

_SECRET_KEY = re.compile(
    r"(pass(word|wd)?|secret|token|authorization|api[_-]?key|credential|cookie|private|ciphertext)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_KEY_LITERAL = re.compile(r"\b(ubk_[A-Za-z0-9_-]{8,}|whsec_[A-Za-z0-9+/=]{8,})")

_live_secrets: set[str] = set()
_live_lock = threading.Lock()


@contextmanager
def secret_in_flight(value: str) -> Iterator[None]:
    """Mask ``value`` in every log line while it is held in memory (e.g. a new password)."""
    with _live_lock:
        _live_secrets.add(value)
    try:
        yield
    finally:
        with _live_lock:
            _live_secrets.discard(value)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        text = _KEY_LITERAL.sub(REDACTED, _BEARER.sub(r"\1 " + REDACTED, value))
        for secret in list(_live_secrets):
            if secret and secret in text:
                text = text.replace(secret, REDACTED)
        return text
    if isinstance(value, dict):
        return {k: (REDACTED if _SECRET_KEY.search(str(k)) else _scrub(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    return value


def redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Remove secret-looking fields and any live secret value from the event."""
    for key in list(event_dict):
        if key != "event" and _SECRET_KEY.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time, so a replaced stream (tests, daemons) is followed."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        return


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
    ]


def configure(log_format: str | None = None, level: str = "info") -> None:
    """Configure structlog and route the standard library (uvicorn, alembic) through it."""
    use_json = (log_format or ("console" if sys.stderr.isatty() else "json")) == "json"
    renderer: Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared = _shared_processors()
    numeric_level = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "alembic"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # Our own request log line replaces uvicorn's access log.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    for noisy in (
        "pypsrp",
        "psrpcore",
        "urllib3",
        "requests_ntlm",
        "spnego",
        "httpx",
        "aiosqlite",
        "alembic",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)


def bind(**values: Any) -> None:
    structlog.contextvars.bind_contextvars(**values)


@contextmanager
def bound(**values: Any) -> Iterator[None]:
    with structlog.contextvars.bound_contextvars(**values):
        yield
