"""Operations shared by the HTTP API and the CLI, so both take exactly the same path."""

from __future__ import annotations

import re
import time
from typing import Any

from service.api.schemas import CaseCreate, CasePublic
from service.domain.plan import RequestedActions
from service.errors import InvalidInput, Unavailable
from service.logging import get_logger
from service.persistence import cases
from service.persistence.cases import IdempotencyRequest, NewCase, Stored, request_hash
from service.persistence.records import CaseSnapshot
from service.runtime import Runtime
from service.security.inputs import check_domain

log = get_logger(__name__)

_IDEMPOTENCY = re.compile(r"^[\x21-\x7e]{1,255}$")
DOMAIN_CACHE_SECONDS = 300.0


def location(case_id: str) -> str:
    return f"/v1/cases/{case_id}"


async def allowed_domains(runtime: Runtime) -> list[str]:
    """UNBLOCK_ALLOWED_DOMAINS, or the tenant's accepted domains (cached for five minutes)."""
    if runtime.settings.allowed_domains:
        return runtime.settings.allowed_domains
    cached = runtime.domain_cache
    if cached is not None and time.monotonic() - cached[0] < DOMAIN_CACHE_SECONDS:
        return list(cached[1])
    if runtime.gateway is None:
        raise Unavailable("no domain list: set UNBLOCK_ALLOWED_DOMAINS or a PowerShell endpoint")
    domains = await runtime.gateway.accepted_domains()
    runtime.domain_cache = (time.monotonic(), domains)
    return domains


async def open_case(
    runtime: Runtime, body: CaseCreate, *, actor: str, principal_id: str, key: str | None = None
) -> Stored:
    """Replay an idempotent create, or validate the domain, create the case and wake the worker.

    The replay comes first: a client retrying after a lost response must get the original
    answer even if the tenant is unreachable now or the allowed domains changed since.
    """
    idempotency = None
    if key is not None:
        if not _IDEMPOTENCY.match(key):
            raise InvalidInput("Idempotency-Key must be 1-255 visible ASCII characters", field="Idempotency-Key")
        idempotency = IdempotencyRequest(
            principal=principal_id, key=key, request_hash=request_hash(body.model_dump(mode="json"))
        )
        if (earlier := await cases.replay(runtime.db, idempotency)) is not None:
            return earlier
    check_domain(body.mailbox, await allowed_domains(runtime))
    new = NewCase(
        mailbox=body.mailbox,
        ticket_ref=body.ticket_ref,
        requested_by=body.requested_by,
        note=body.note,
        actions=RequestedActions.from_dict(body.actions.model_dump()),
        require_approval=runtime.settings.require_approval,
    )

    def render(case: CaseSnapshot) -> tuple[dict[str, Any], str]:
        return CasePublic.of(case).model_dump(mode="json"), location(case.id)

    stored = await cases.create_case(
        runtime.db, new=new, actor=actor, now=runtime.clock(), render=render, idempotency=idempotency
    )
    if not stored.replayed:
        runtime.work.notify()
        runtime.events.publish(str(stored.body.get("id")))
        log.info("case_created", case_id=stored.body.get("id"), mailbox=body.mailbox, actor=actor)
    return stored
