"""A stub for DNS: nothing outside resolves here, and tests decide what a name's addresses are."""

from __future__ import annotations

from collections.abc import Sequence


class StubResolver:
    """Answers from a table, as ``getaddrinfo`` would (a name it does not know has no address).

    ``asked`` records every question, so a test can show that a literal address needed no DNS;
    ``answers`` may be changed while a test runs (a name whose address changes: rebinding).
    """

    def __init__(self, answers: dict[str, Sequence[str]] | None = None) -> None:
        self.answers: dict[str, Sequence[str]] = dict(answers or {})
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return list(self.answers.get(host, ()))
