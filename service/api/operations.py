"""Operations shared by the HTTP API and the CLI, so both take exactly the same path."""

from __future__ import annotations

import re
import time
from typing import Any

from service.api.schemas import CaseCreate
from service.domain.findings import Containment
from service.domain.plan import RequestedActions
from service.domain.tenancy import TenantDomains, accepted_by, route, visible
from service.errors import Forbidden, InvalidInput
from service.logging import get_logger
from service.persistence import cases, tenants
from service.persistence.cases import IdempotencyRequest, Stored, request_hash
from service.persistence.records import CaseSnapshot, case_document
from service.persistence.writer import NewCase
from service.runtime import Runtime

log = get_logger(__name__)

_IDEMPOTENCY = re.compile(r"^[\x21-\x7e]{1,255}$")
DOMAIN_CACHE_SECONDS = 30.0


def location(case_id: str) -> str:
    return f"/v1/cases/{case_id}"


async def intake_tenants(runtime: Runtime) -> list[TenantDomains]:
    """Every tenant with the accepted domains workers stored (UNBLOCK_ALLOWED_DOMAINS for ``default``),
    re-read every 30 s.

    Never the tenants themselves: intake must not wait for, or fail with, the runner host. A
    domain no known list holds while some list is not known yet (a first start during an
    outage) leaves the case's tenant to the worker, which checks the domain before it sends.
    """
    cached = runtime.tenant_cache
    if cached is not None and time.monotonic() - cached[0] < DOMAIN_CACHE_SECONDS:
        return list(cached[1])
    view = await tenants.intake_view(runtime.db, runtime.settings)
    if all(t.domains is not None for t in view if t.enabled):
        runtime.tenant_cache = (time.monotonic(), tuple(view))
    return view


async def open_case(
    runtime: Runtime,
    body: CaseCreate,
    *,
    actor: str,
    principal_id: str,
    principal_kind: str,
    key: str | None = None,
    scope: tuple[str, ...] | None = None,
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
    known = await intake_tenants(runtime)
    tenant = route(body.mailbox, known, requested=body.tenant)
    if not visible(tenant, scope):
        raise Forbidden(
            f"this credential may open cases only for {', '.join(scope or ())}"
            + ("" if tenant is None else f", not for tenant {tenant}")
        )
    new = NewCase(
        mailbox=body.mailbox,
        ticket_ref=body.ticket_ref,
        requested_by=body.requested_by,
        note=body.note,
        actions=RequestedActions.from_dict(body.actions.model_dump()).resolve(
            Containment(runtime.settings.containment)
        ),
        require_approval=runtime.settings.require_approval,
        created_by_kind=principal_kind,
        created_by_id=principal_id,
        tenant=tenant,
    )

    def render(case: CaseSnapshot) -> tuple[dict[str, Any], str]:
        return case_document(case), location(case.id)

    now = runtime.clock()
    local = runtime.local_worker
    reservation = local.reserve(now) if local is not None else None
    try:
        stored = await cases.create_case(
            runtime.db,
            new=new,
            actor=actor,
            now=now,
            render=render,
            idempotency=idempotency,
            lease=reservation.lease if reservation is not None else None,
            # The first step starts here only for a mailbox whose domain is known to be the tenant's:
            # otherwise the worker checks it first, and no password is sealed for a foreign mailbox.
            then=reservation.start if reservation is not None and accepted_by(body.mailbox, tenant, known) else None,
        )
    except BaseException:
        if local is not None and reservation is not None:
            local.unreserve(reservation)
        raise
    if local is not None and reservation is not None:
        if stored.claimed is not None:
            local.take(stored.claimed, reservation)  # this process's worker goes on with it now
        else:
            local.unreserve(reservation)  # a replay: nothing was created
    if not stored.replayed:
        if stored.claimed is None:
            runtime.work.notify()
        runtime.events.publish(str(stored.body.get("id")))
        log.info("case_created", case_id=stored.body.get("id"), mailbox=body.mailbox, actor=actor)
    return stored
