"""/docs (issue 15, item 9): Swagger UI and its start-up script from our origin, under a CSP without inline script."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx

PAGE_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


class _Resources(HTMLParser):
    """Every URL the page loads, and the text of every script element."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts: list[dict[str, str | None]] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script":
            self.scripts.append(values)
            self._in_script = True
        for name in ("src", "href", "data-openapi-url"):
            if values.get(name):
                self.urls.append(str(values[name]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(data)


def _directives(policy: str) -> dict[str, list[str]]:
    parts = (p.split() for p in policy.split(";") if p.strip())
    return {words[0]: words[1:] for words in parts}


async def test_docs_and_their_assets_come_from_our_origin_only(client: httpx.AsyncClient) -> None:
    """No CDN: every script, stylesheet and icon of /docs is a path on this server, and each one loads."""
    page = await client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    found = _Resources()
    found.feed(page.text)
    assert found.urls, page.text
    assert all(url.startswith("/") and not url.startswith("//") for url in found.urls), found.urls
    assert "jsdelivr" not in page.text
    assert "http" not in page.text  # no absolute URL at all
    for url in found.urls:
        response = await client.get(url)
        assert response.status_code == 200, url
        suffix = url[url.rfind(".") :]
        if suffix in PAGE_TYPES:
            assert PAGE_TYPES[suffix] in response.headers["content-type"], (url, response.headers["content-type"])
    bundle = await client.get("/docs/assets/swagger-ui-bundle.js")
    version = re.search(r'PACKAGE_VERSION:"(\d+)\.', bundle.text)
    assert version is not None
    assert int(version.group(1)) >= 5, "Swagger UI 5 or later renders OpenAPI 3.1"


async def test_docs_page_has_no_inline_script_and_its_csp_allows_none(client: httpx.AsyncClient) -> None:
    """Every script is a file; script-src is 'self' alone: no 'unsafe-inline', no other host."""
    page = await client.get("/docs")
    found = _Resources()
    found.feed(page.text)
    assert found.scripts
    assert all(s.get("src") for s in found.scripts)
    assert found.inline == []
    assert "style=" not in page.text
    policy = _directives(page.headers["content-security-policy"])
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["default-src"] == ["'self'"]
    assert "'unsafe-inline'" not in page.headers["content-security-policy"]
    assert (await client.get("/openapi.json")).json()["openapi"].startswith("3.1")
