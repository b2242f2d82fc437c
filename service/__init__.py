"""unblock-service: brings Microsoft 365 accounts back from Exchange Online's restricted-sender list."""

from __future__ import annotations

__version__ = "0.1.0"
