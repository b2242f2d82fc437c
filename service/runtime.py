"""The parts one process runs with, built once and handed to the API and the worker.

The CLI builds a :class:`Runtime` from the settings; tests build one around a temporary
database and the sandbox. Nothing here holds logic: it is the wiring diagram.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from service.config import Settings
from service.persistence.db import Database

if TYPE_CHECKING:
    from service.powershell.port import TenantGateway


def utc_now() -> datetime:
    return datetime.now(UTC)


class WorkSignal:
    """Wakes the in-process worker at once when the API creates or changes a case."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._event.wait(), seconds)
        except TimeoutError:
            return False
        finally:
            self._event.clear()
        return True


@dataclass
class Runtime:
    settings: Settings
    db: Database
    gateway: TenantGateway | None = None
    clock: Callable[[], datetime] = utc_now
    work: WorkSignal = field(default_factory=WorkSignal)
    instance: str = "unblock"
