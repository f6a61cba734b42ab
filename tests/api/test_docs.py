"""`/docs` works with no internet: every asset the page names is served by darkroom itself."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


async def test_docs_names_only_assets_it_serves(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    links = Links()
    links.feed(page.text)
    assert len(links.urls) >= 3, links.urls  # the script, its style, the icon
    for url in links.urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = await client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url
    # The page's script asks for the document here, and never for a validator elsewhere.
    assert "'/openapi.json'" in page.text or '"/openapi.json"' in page.text
    assert re.search(r'"validatorUrl":\s*null', page.text)
    assert not re.search(r"https?://", page.text.replace("http://www.w3.org", ""))


async def test_the_document_is_served_and_describes_the_create(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    create = document["paths"]["/v1/images/generations"]["post"]
    assert "darkroom.tasks" not in create["description"]  # written for clients, not for us
    assert "curl" in document["info"]["description"]
