"""/docs works without internet access: Swagger UI's script and style come from this service (the
swagger-ui-py package), never a CDN; the favicon is served too. Real HTTP; the database does not
matter here, so SQLite only."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from app.config import Settings
from app.main import create_app
from tests.support import web
from tests.support.server import serve_asgi


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir: Path = tmp_path_factory.mktemp("docs")
    settings = Settings(
        api_token=SecretStr("docs-test-token-12345"), data_dir=data_dir, scheduler_enabled=False
    )
    with serve_asgi(create_app(settings)) as url:
        yield url


def test_docs_load_every_asset_from_this_service(service_url: str) -> None:
    page = web.get(f"{service_url}/docs")
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets, page.text
    assert [a for a in assets if not a.startswith("/")] == [], "an asset from another origin"
    assert "http" not in re.sub(r"http://127\.0\.0\.1:\d+", "", page.text).replace("https://swagger.io", "")

    script = web.get(f"{service_url}/static/docs/swagger-ui-bundle.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "SwaggerUIBundle" in script.text
    style = web.get(f"{service_url}/static/docs/swagger-ui.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    assert ".swagger-ui" in style.text


def test_the_packaged_swagger_ui_reads_our_openapi_version(service_url: str) -> None:
    """FastAPI writes OpenAPI 3.1, which Swagger UI renders from version 5 on (4.x shows an error)."""
    schema = web.get(f"{service_url}/openapi.json").json()
    assert schema["openapi"].startswith("3.1")
    script = web.get(f"{service_url}/static/docs/swagger-ui-bundle.js").text
    version = re.search(r'PACKAGE_VERSION:"(\d+)\.', script)
    assert version and int(version.group(1)) >= 5, "Swagger UI 5 or later is needed for OpenAPI 3.1"


def test_only_the_two_docs_assets_are_served(service_url: str) -> None:
    for name in ("swagger-editor-bundle.js", "..%2F..%2Fcore.py", "index.html"):
        assert web.get(f"{service_url}/static/docs/{name}").status_code == 404


def test_favicon(service_url: str) -> None:
    for path in ("/favicon.svg", "/favicon.ico"):
        icon = web.get(f"{service_url}{path}")
        assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
        assert icon.text.startswith("<svg")
