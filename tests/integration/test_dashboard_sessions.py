"""Dashboard sessions: server-side, revocable, not forgeable, not set by another site, Secure over HTTPS."""

from __future__ import annotations

import httpx

from service.persistence import keys as key_rows
from service.sandbox.server import SandboxServer
from service.security.keys import prefix_of
from tests.stack import Stack, running_stack

SAME_ORIGIN = {"Origin": "http://unblock.test", "Sec-Fetch-Site": "same-origin", "Authorization": ""}


async def _login(stack: Stack, headers: dict[str, str] | None = None, **options: object) -> httpx.Response:
    return await stack.client.post(
        "/ui/login", data={"key": stack.key}, headers=headers or SAME_ORIGIN, follow_redirects=False, **options
    )


async def _page(stack: Stack, cookie: str) -> int:
    response = await stack.client.get(
        "/ui", headers={"Authorization": "", "Cookie": f"unblock_session={cookie}"}, follow_redirects=False
    )
    return response.status_code


async def test_logout_revokes_the_session_even_for_a_copied_cookie(database_url: str, sandbox: SandboxServer) -> None:
    async with running_stack(database_url, sandbox, worker=False) as stack:
        login = await _login(stack)
        assert login.status_code == 303
        cookie = login.cookies["unblock_session"]
        assert await _page(stack, cookie) == 200
        logout = await stack.client.post(
            "/ui/logout",
            headers={**SAME_ORIGIN, "Cookie": f"unblock_session={cookie}"},
            follow_redirects=False,
        )
        assert logout.status_code == 303
        assert await _page(stack, cookie) == 303  # back to the login page: the copy is dead too


async def test_revoking_the_key_ends_its_dashboard_sessions(database_url: str, sandbox: SandboxServer) -> None:
    async with running_stack(database_url, sandbox, worker=False) as stack:
        cookie = (await _login(stack)).cookies["unblock_session"]
        record = await key_rows.find_by_prefix(stack.runtime.db, prefix=prefix_of(stack.key) or "")
        assert record is not None
        await key_rows.revoke_key(stack.runtime.db, key_id=record.id, signer=stack.runtime.audit_signer)
        assert await _page(stack, cookie) == 303


async def test_a_cross_site_login_is_refused(database_url: str, sandbox: SandboxServer) -> None:
    """Login CSRF: another site posting our login form (with its own key) sets no session."""
    async with running_stack(database_url, sandbox, worker=False) as stack:
        for headers in (
            {"Origin": "https://evil.example", "Authorization": ""},
            {"Sec-Fetch-Site": "cross-site", "Authorization": ""},
            {"Origin": "null", "Authorization": ""},
        ):
            refused = await _login(stack, headers)
            assert refused.status_code == 403, headers
            assert "unblock_session" not in refused.cookies
        forced_logout = await stack.client.post("/ui/logout", headers={"Sec-Fetch-Site": "cross-site"})
        assert forced_logout.status_code == 403


async def test_our_own_form_is_accepted_under_no_referrer(database_url: str, sandbox: SandboxServer) -> None:
    """Our pages send Referrer-Policy: no-referrer, so a browser posts our form with Origin: null; its
    Sec-Fetch-Site: same-origin (which no page can forge) still lets the sign-in through."""
    async with running_stack(database_url, sandbox, worker=False) as stack:
        signed_in = await _login(stack, {"Origin": "null", "Sec-Fetch-Site": "same-origin", "Authorization": ""})
        assert signed_in.status_code == 303
        assert "unblock_session" in signed_in.cookies


async def test_crafted_cookies_are_not_a_500(database_url: str, sandbox: SandboxServer) -> None:
    async with running_stack(database_url, sandbox, worker=False) as stack:
        for crafted in ("a.\xb2.b", "a.b.c", "", "x" * 500, "eyJ.e30.AAAA", "%00"):
            response = await stack.client.get(
                "/ui",
                headers=[(b"Authorization", b""), (b"Cookie", b"unblock_session=" + crafted.encode("latin-1"))],
                follow_redirects=False,
            )
            assert response.status_code == 303, crafted


async def test_secure_cookies_over_https_and_no_plain_http_sign_in_from_afar(
    database_url: str, sandbox: SandboxServer
) -> None:
    """Through a trusted proxy that says https, the cookie is Secure; plain HTTP from another machine is
    told to use HTTPS instead of looping on a cookie the browser would not keep."""
    async with running_stack(database_url, sandbox, worker=False, trusted_proxies=["127.0.0.0/8"]) as stack:
        proxied = await _login(
            stack,
            {
                "Origin": "https://unblock.test",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-For": "198.51.100.4",
                "Authorization": "",
            },
        )
        assert proxied.status_code == 303
        assert "secure" in proxied.headers["set-cookie"].lower()
        plain = await _login(stack, {"X-Forwarded-For": "198.51.100.4", "Authorization": ""})
        assert plain.status_code == 403
        assert "HTTPS" in plain.text
        assert "unblock_session" not in plain.cookies
        page = await stack.client.get("/ui/login", headers={"X-Forwarded-For": "198.51.100.4"})
        assert "HTTPS" in page.text
    async with running_stack(database_url, sandbox, worker=False) as local:
        direct = await _login(local)  # loopback, plain HTTP: allowed, not Secure
        assert direct.status_code == 303
        assert "secure" not in direct.headers["set-cookie"].lower()
