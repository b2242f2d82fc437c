"""GET /v1/cases/{id} carries an ETag and answers If-None-Match with 304 while the case is unchanged."""

from __future__ import annotations

from service.sandbox.server import SandboxServer
from tests.stack import running_stack


async def test_a_poller_gets_304_until_the_case_changes(database_url: str, sandbox: SandboxServer) -> None:
    async with running_stack(database_url, sandbox, worker=False, allowed_domains=["contoso.com"]) as stack:
        case = await stack.open("rob@contoso.com")
        first = await stack.client.get(f"/v1/cases/{case['id']}")
        assert first.status_code == 200
        tag = first.headers["etag"]
        assert first.headers["cache-control"] == "private, no-cache"

        unchanged = await stack.client.get(f"/v1/cases/{case['id']}", headers={"If-None-Match": tag})
        assert unchanged.status_code == 304
        assert unchanged.content == b""
        assert unchanged.headers["etag"] == tag
        weak = await stack.client.get(f"/v1/cases/{case['id']}", headers={"If-None-Match": f"W/{tag}"})
        assert weak.status_code == 304
        other = await stack.client.get(f"/v1/cases/{case['id']}", headers={"If-None-Match": '"0000"'})
        assert other.status_code == 200
        assert other.json() == first.json()

        cancelled = await stack.client.post(f"/v1/cases/{case['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        changed = await stack.client.get(f"/v1/cases/{case['id']}", headers={"If-None-Match": tag})
        assert changed.status_code == 200
        assert changed.json()["state"] == "cancelled"
        assert changed.headers["etag"] != tag
        # Another tenant's or an unknown case is still 404, tag or not.
        missing = await stack.client.get("/v1/cases/01jd8v9q2m3n4p5q6r7s8t9v0w", headers={"If-None-Match": "*"})
        assert missing.status_code == 404
