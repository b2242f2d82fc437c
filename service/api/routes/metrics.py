"""/metrics: Prometheus text format (no authentication; expose it only to your scraper's network)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import metrics
from service.api.deps import RuntimeDep
from service.domain.states import CaseState
from service.errors import Unavailable
from service.persistence import cases

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="Cases by state, transitions, step and remote-call durations and failures, pool usage, "
    "webhook deliveries, discovery runs, HTTP requests.",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def prometheus(runtime: RuntimeDep) -> Response:
    try:
        counts = await cases.count_by_state(runtime.db)
    except Unavailable:
        counts = {}
    for state in CaseState:
        metrics.CASES.labels(state=state.value).set(counts.get(state.value, 0))
    gateway = runtime.gateway
    stats = getattr(gateway, "stats", None)
    if callable(stats):
        pool = stats()
        metrics.POOL_SIZE.set(pool.size)
        metrics.POOL_RUNSPACES.labels(state="in_use").set(pool.in_use)
        metrics.POOL_RUNSPACES.labels(state="idle").set(pool.idle)
        metrics.POOL_RUNSPACES.labels(state="opening").set(pool.opening)
    circuit = getattr(gateway, "circuit_state", None)
    if isinstance(circuit, str):
        metrics.CIRCUIT_STATE.set(0 if circuit == "closed" else 1)
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)
