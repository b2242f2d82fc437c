"""Webhook subscriptions follow tenants: a key limited to fabrikam subscribes, and its receiver gets
fabrikam's events only, while an unlimited subscription gets every tenant's.

A subscription carries the tenant scope of the key that made it (or a narrower one it names); a
limited key sees, reads and deletes only subscriptions within its tenants, and cannot name another
tenant's events.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from service.sandbox.server import SandboxServer
from tests.helpers import until
from tests.integration.test_tenants import _add_fabrikam, _cli_env, _limited_key
from tests.integration.test_webhooks import FAST, LOOPBACK
from tests.receiver import Receiver
from tests.stack import running_stack


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    first, second = Receiver().start(), Receiver().start()
    yield first, second
    first.stop()
    second.stop()


def _cases_seen(receiver: Receiver, secret: str) -> list[tuple[str, str | None]]:
    hook = Webhook(secret)
    seen = []
    for item in receiver.received:
        payload: dict[str, Any] = hook.verify(item.body, item.headers)
        seen.append((payload["data"]["case"]["mailbox"], payload["data"]["case"]["tenant"]))
    return seen


async def test_a_limited_keys_subscription_gets_only_its_tenants_events(
    database_url: str, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch, receivers: tuple[Receiver, Receiver]
) -> None:
    _cli_env(monkeypatch, database_url, sandbox)
    everything, only_fabrikam = receivers
    async with running_stack(database_url, sandbox, allowed_domains=["contoso.com"], **FAST, **LOOPBACK) as stack:
        await _add_fabrikam()
        stack.runtime.tenant_cache = None
        key, _ = await _limited_key(stack, "fabrikam-hooks", ["fabrikam"], ["webhooks:manage"])
        limited = {"Authorization": f"Bearer {key}"}

        created = await stack.client.post(
            "/v1/webhooks", json={"url": only_fabrikam.url, "events": ["case.created"]}, headers=limited
        )
        assert created.status_code == 201, created.text
        assert created.json()["tenants"] == ["fabrikam"]  # the key's scope, carried by the subscription
        mine = created.json()
        unlimited = await stack.client.post("/v1/webhooks", json={"url": everything.url, "events": ["case.created"]})
        assert unlimited.status_code == 201, unlimited.text
        assert unlimited.json()["tenants"] is None

        # The limited key sees its own subscription only; the other one does not exist for it.
        listed = (await stack.client.get("/v1/webhooks", headers=limited)).json()["items"]
        assert [w["id"] for w in listed] == [mine["id"]]
        other = unlimited.json()["id"]
        assert (await stack.client.get(f"/v1/webhooks/{other}", headers=limited)).status_code == 404
        assert (await stack.client.delete(f"/v1/webhooks/{other}", headers=limited)).status_code == 404
        assert (await stack.client.get(f"/v1/webhooks/{other}/deliveries", headers=limited)).status_code == 404
        assert len((await stack.client.get("/v1/webhooks")).json()["items"]) == 2  # an unlimited key sees both
        # It cannot subscribe to another tenant's events; nobody can name a tenant that does not exist.
        foreign = await stack.client.post(
            "/v1/webhooks",
            json={"url": only_fabrikam.url, "events": ["*"], "tenants": ["default"]},
            headers=limited,
        )
        assert foreign.status_code == 403, foreign.text
        unknown = await stack.client.post(
            "/v1/webhooks", json={"url": everything.url, "events": ["*"], "tenants": ["northwind"]}
        )
        assert unknown.status_code == 422, unknown.text
        assert unknown.json()["field"] == "tenants"
        # A key without webhooks:manage (or admin) cannot subscribe at all.
        reader, _ = await _limited_key(stack, "fabrikam-reader", ["fabrikam"], ["cases:read"])
        refused = await stack.client.post(
            "/v1/webhooks",
            json={"url": only_fabrikam.url, "events": ["*"]},
            headers={"Authorization": f"Bearer {reader}"},
        )
        assert refused.status_code == 403
        assert refused.json()["required_scope"] == "webhooks:manage"

        await stack.open("rob@contoso.com")
        await stack.open("mia@fabrikam.com")
        await until(lambda: len(everything.received) >= 2, "both cases at the unlimited receiver")
        await until(lambda: len(only_fabrikam.received) >= 1, "mia's case at fabrikam's receiver")
        assert sorted(_cases_seen(everything, unlimited.json()["secret"])) == [
            ("mia@fabrikam.com", "fabrikam"),
            ("rob@contoso.com", "default"),
        ]
        assert _cases_seen(only_fabrikam, mine["secret"]) == [("mia@fabrikam.com", "fabrikam")]
