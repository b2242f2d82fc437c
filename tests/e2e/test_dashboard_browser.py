"""The dashboard in a real headless Chromium: sign in, see a case appear, watch it reach resolved live."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.helpers import UNBLOCK, free_port, unblock_process, wait_http

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
pytestmark = pytest.mark.browser

if not Path(CHROMIUM).exists():
    if os.environ.get("UNBLOCK_REQUIRE_BROWSER"):
        raise RuntimeError(f"UNBLOCK_REQUIRE_BROWSER is set but no Chromium at {CHROMIUM} (.ci/run installs it)")
    pytest.skip("no Chromium on this machine; .ci/run installs it and requires this test", allow_module_level=True)

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_the_dashboard_follows_a_case_to_resolved(database_url: str, tmp_path: Path) -> None:
    """A person signs in with a key, opens the case the API created, and sees it resolve without reloading."""
    from playwright.sync_api import expect, sync_playwright

    env = {
        "UNBLOCK_DATABASE_URL": database_url,
        "UNBLOCK_SECRET_KEY": "0" * 64,
        "UNBLOCK_PROPAGATION_WAIT": "10s",
        "UNBLOCK_RECHECK_INTERVAL": "1s",
        "UNBLOCK_DISCOVERY_INTERVAL": "0",
    }
    full_env = {**os.environ, **env}
    created = subprocess.run(
        [
            UNBLOCK,
            "keys",
            "create",
            "--name",
            "desk",
            "--scope",
            "cases:read",
            "--scope",
            "cases:write",
            "--scope",
            "senders:read",
        ],
        env=full_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    key = created.stdout.strip().splitlines()[-1]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with unblock_process(["serve", "--sandbox", "--port", str(port)], env=env, tmp_path=tmp_path) as server:
        wait_http(f"{base}/healthz", server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page()
            page.goto(f"{base}/ui")
            expect(page).to_have_url(f"{base}/ui/login")
            page.fill("#key", "ubk_wrong_key")
            page.click("button[type=submit]")
            expect(page.locator(".error")).to_contain_text("not valid")
            page.fill("#key", key)
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{base}/ui")
            expect(page.locator("#senders")).to_contain_text("rob@contoso.com")

            response = httpx.post(
                f"{base}/v1/cases",
                json={"mailbox": "rob@contoso.com", "ticket_ref": "INC-UI"},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert response.status_code == 201
            case_id = response.json()["id"]
            row = page.locator(f"#cases tr[data-case='{case_id}']")
            expect(row).to_be_visible(timeout=15_000)  # the list refreshes itself
            expect(row).to_contain_text("INC-UI")
            row.locator("a").click()
            expect(page).to_have_url(f"{base}/ui/cases/{case_id}")
            expect(page.locator("#state")).to_have_text("resolved", timeout=30_000)
            expect(page.locator("#outcome")).to_contain_text("unblocked", timeout=10_000)
            expect(page.locator("#timeline")).to_contain_text("awaiting_propagation → resolved")
            expect(page.locator("#steps")).to_contain_text("propagation")
            assert page.evaluate("() => document.documentElement.outerHTML").count(key) == 0
            headers = page.request.get(f"{base}/ui").headers
            assert headers["x-frame-options"] == "DENY"
            assert "script-src 'self'" in headers["content-security-policy"]
            browser.close()


def test_the_api_docs_render_from_our_origin_under_the_csp(database_url: str, tmp_path: Path) -> None:
    """Swagger UI shows the OpenAPI 3.1 document with nothing fetched from elsewhere and no CSP violation."""
    from playwright.sync_api import expect, sync_playwright

    env = {"UNBLOCK_DATABASE_URL": database_url, "UNBLOCK_SECRET_KEY": "0" * 64}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with unblock_process(["serve", "--no-worker", "--port", str(port)], env=env, tmp_path=tmp_path) as server:
        wait_http(f"{base}/healthz", server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page()
            requested: list[str] = []
            complaints: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.on("console", lambda message: complaints.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: complaints.append(str(error)))
            page.goto(f"{base}/docs")
            expect(page.locator(".opblock").first).to_be_visible(timeout=15_000)
            expect(page.locator(".info")).to_contain_text("OAS 3.1")
            page.locator(".opblock-summary").first.click()
            expect(page.locator(".opblock-body").first).to_be_visible()
            browser.close()
    assert f"{base}/openapi.json" in requested
    assert [url for url in requested if not url.startswith(base + "/")] == []
    assert complaints == [], complaints  # a CSP violation is reported as a console error
