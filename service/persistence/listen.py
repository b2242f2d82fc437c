"""PostgreSQL LISTEN: wake workers in other processes the moment a case becomes due.

Reconnects with backoff (capped at RECONNECT_MAX seconds, so recovery after an outage is seen
at once) when the database restarts; a missed notification only delays work until the worker's
fallback poll, and every reconnect wakes the worker once for anything it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import psycopg
from sqlalchemy.engine import make_url

from service.logging import get_logger
from service.persistence.writer import NOTIFY_CHANNEL

log = get_logger(__name__)

RECONNECT_MAX = 2.0
CONNECT_TIMEOUT = 3


def conninfo(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


async def listen(url: str, on_notify: Callable[[str], None], *, channel: str = NOTIFY_CHANNEL) -> None:
    """Run until cancelled, calling ``on_notify(payload)`` for each notification."""
    backoff = 0.25
    failures = 0
    while True:
        try:
            connection = await psycopg.AsyncConnection.connect(
                conninfo(url), autocommit=True, connect_timeout=CONNECT_TIMEOUT
            )
        except psycopg.Error as error:
            failures += 1
            if failures == 1:  # once per outage; the database logs the outage itself
                log.warning("listen_connect_failed", error_class=type(error).__name__, retry_in=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_MAX)
            continue
        if failures:
            log.info("listen_reconnected", after_failures=failures)
        backoff, failures = 0.25, 0
        try:
            async with connection:
                await connection.execute(f"LISTEN {channel}")
                on_notify("")  # anything that happened while we were not listening
                async for notice in connection.notifies():
                    on_notify(notice.payload)
        except psycopg.Error as error:
            log.warning("listen_lost", error_class=type(error).__name__)
            with contextlib.suppress(Exception):
                await connection.close()
            await asyncio.sleep(backoff)
