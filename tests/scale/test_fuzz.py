"""Schemathesis against the live OpenAPI document: no 5xx, and every answer is what the spec says.

The API runs as its own process on PostgreSQL (`unblock serve --no-worker`), exactly as deployed
behind a load balancer. Every operation is fuzzed with data that fits the spec and with data that
does not, with a fixed derandomized seed, once with generated path ids and once with ids that
exist (so the 200 paths are exercised too, not only the 404s). All of schemathesis's default
checks run on every response; failures are collected across operations and reported together.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from jsonschema import Draft202012Validator
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection, not_a_server_error, positive_data_acceptance

from service.sandbox.server import SandboxServer
from tests.scale.harness import Cluster, cluster_for, setting


def _seed_records(cluster: Cluster) -> dict[str, str]:
    """A few real rows so that path ids can point at things that exist."""
    headers = {"Authorization": f"Bearer {cluster.key}"}
    with httpx.Client(base_url=cluster.base, headers=headers, timeout=30) as client:
        case_ids = []
        for n in range(4):
            created = client.post("/v1/cases", json={"mailbox": f"fuzz{n}@contoso.com", "ticket_ref": f"F-{n}"})
            assert created.status_code == 201, created.text
            case_ids.append(created.json()["id"])
        hook = client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["*"]})
        assert hook.status_code == 201, hook.text
        webhook_id = hook.json()["id"]
    deliveries = cluster.query("SELECT id FROM webhook_deliveries ORDER BY id LIMIT 1")
    known = {"case_id": case_ids[0], "webhook_id": webhook_id}
    if deliveries:
        known["delivery_id"] = str(deliveries[0][0])
    return known


# Values whose acceptance no static spec can state, and the fields each may be refused for: the
# mailbox's domain must be one the service may act on (configuration, or the tenant's accepted
# domains), an Idempotency-Key reused with another body is refused (as the IETF draft says), a
# webhook URL may use http only where configuration allows, and a cursor must be one the
# service gave out (it is opaque).
#: Operations whose answer for an existing case is a stream that stays open while the case does.
_ENDLESS = {"GET /v1/cases/{case_id}/events/stream"}

_BEYOND_THE_SPEC = {
    # (and the tenant named must be one that takes cases)
    "POST /v1/cases": {"mailbox", "Idempotency-Key", "tenant"},
    "POST /v1/webhooks": {"url", "tenants"},  # (and the tenants named must exist)
    "GET /v1/cases": {"cursor"},
}


def _documented_unreadiness(label: str, response: requests.Response) -> bool:
    """/readyz?require=powershell on an API-only process: 503 naming powershell is its documented answer
    (the process runs no worker, so it has no endpoint), not a server error."""
    if label != "GET /readyz" or response.status_code != 503:
        return False
    return bool(response.json().get("failing") == ["powershell"])


def _refused_beyond_the_spec(label: str, response: requests.Response) -> bool:
    """A schema-valid request refused (422) only for a field the spec cannot fully describe."""
    allowed = _BEYOND_THE_SPEC.get(label, set())
    if not allowed or response.status_code != 422:
        return False
    body = response.json()
    fields = {e.get("field") for e in body.get("errors") or []} or {body.get("field")}
    return fields <= allowed


_BOOLEANS = {"true", "false", "1", "0", "yes", "no", "on", "off", "t", "f", "y", "n"}


def _readings(raw: str) -> list[Any]:
    """What one query-string value can mean to the server: the string, an integer, a boolean."""
    readings: list[Any] = [raw]
    try:
        number = float(raw)
    except ValueError:
        pass
    else:
        if number.is_integer():
            readings.append(int(number))
    if raw.lower() in _BOOLEANS:
        readings.append(raw.lower() in {"true", "1", "yes", "on", "t", "y"})
    return readings


def _valid_on_the_wire(operation: Any, case: Any) -> bool:
    """A negative GET whose query mutation did not survive serialisation: what was sent is valid.

    Schemathesis mutates the query as a JSON object, but a query string has no arrays: an extra
    key whose value is an empty list (``{"": []}``) is sent as nothing at all, and a one-element
    list (``{"ticket_ref": [false]}``) as ``ticket_ref=false``, a valid string. Such a request is
    still sent and every other check still runs on its answer; only "invalid data should have
    been rejected" is dropped, and only when the query as it goes over the wire (each key once,
    each value read as a string, an integer or a boolean) validates against the spec and no
    header other than Authorization was generated. ``{"limit": [0]}`` (sent as ``limit=0``)
    stays a negative case.
    """
    query = case.query or {}
    parameters = {p.name: p for p in operation.query}
    lossy = any(isinstance(v, (list, dict)) for v in query.values()) or bool(set(query) - set(parameters))
    if case.method.upper() != "GET" or not lossy:
        return False
    if {name.lower() for name in (case.headers or {})} - {"authorization"}:
        return False
    kwargs = case.as_transport_kwargs(base_url="http://wire.invalid")
    url = requests.Request(method="GET", url=kwargs["url"], params=kwargs.get("params")).prepare().url
    sent = parse_qsl(urlsplit(url or "").query, keep_blank_values=True)
    counts = Counter(key for key, _ in sent)
    if any(key not in parameters or n > 1 for key, n in counts.items()):
        return False
    if any(p.is_required and name not in counts for name, p in parameters.items()):
        return False
    for key, raw in sent:
        validator = Draft202012Validator(parameters[key].definition.get("schema", {}))
        if not any(validator.is_valid(reading) for reading in _readings(raw)):
            return False
    return True


def test_the_live_api_against_its_own_spec(database_url: str, tmp_path: Path, sandbox_server: SandboxServer) -> None:
    examples = int(setting("UNBLOCK_TEST_FUZZ_EXAMPLES", 40))
    with cluster_for(database_url, tmp_path, sandbox_server.port, sandbox_server.base_url) as cluster:
        known = _seed_records(cluster)
        schema = schemathesis.openapi.from_url(f"{cluster.base}/openapi.json")
        auth = {"Authorization": f"Bearer {cluster.key}"}
        session = requests.Session()
        sent: Counter[str] = Counter()
        statuses: Counter[int] = Counter()
        failures: dict[str, str] = {}
        nothing_to_negate: list[str] = []

        def fuzz(operation: Any, mode: GenerationMode, path_parameters: dict[str, str] | None) -> None:
            label = f"{operation.label} [{mode.value}{', known ids' if path_parameters else ''}]"

            @settings(
                max_examples=examples,
                derandomize=True,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
            def run(case: Any) -> None:
                response = case.call(base_url=cluster.base, session=session, headers=auth, timeout=30)
                sent[operation.label] += 1
                unready = _documented_unreadiness(operation.label, response)
                statuses[response.status_code if not unready else 200] += 1
                excluded = [not_a_server_error] if unready else []
                if mode is GenerationMode.POSITIVE and _refused_beyond_the_spec(operation.label, response):
                    excluded.append(positive_data_acceptance)
                if mode is GenerationMode.NEGATIVE and _valid_on_the_wire(operation, case):
                    excluded.append(negative_data_rejection)
                try:
                    case.validate_response(response, headers=auth, excluded_checks=excluded)
                except (AssertionError, BaseExceptionGroup) as error:  # every failed check, with the request
                    failures.setdefault(label, f"{error}\n    {case.as_curl_command(headers=auth)}"[:2000])

            started = time.monotonic()
            try:
                run()
            except Unsatisfiable:
                # Nothing in the operation can be made invalid (no parameters, no body).
                assert mode is GenerationMode.NEGATIVE, label
                nothing_to_negate.append(operation.label)
            print(f"  {label}: {time.monotonic() - started:.1f}s")

        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 15, "the spec lost operations"
        for operation in operations:
            names = {p.name for p in operation.path_parameters}
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz(operation, mode, None)
                # A live stream of a case that exists lasts until the case ends (no worker here): only 404s.
                if names and names <= set(known) and operation.label not in _ENDLESS:
                    fuzz(operation, mode, {name: known[name] for name in names})

        total = sum(sent.values())
        print(
            f"\nschemathesis: {total} requests over {len(sent)} operations; statuses {dict(sorted(statuses.items()))}"
        )
        assert failures == {}, "\n\n".join(f"{label}:\n  {detail}" for label, detail in failures.items())
        assert not [s for s in statuses if s >= 500], statuses
        assert set(nothing_to_negate) <= {"GET /healthz", "GET /readyz", "GET /metrics"}, nothing_to_negate
        assert set(sent) == {o.label for o in operations}, "an operation was never called"
        assert total >= 10 * examples, f"only {total} requests were sent"
        alive = httpx.get(f"{cluster.base}/healthz", timeout=10)
        assert alive.status_code == 200
