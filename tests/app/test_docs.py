"""Offline /docs: every asset local, no reference to another host."""

from __future__ import annotations

import re
from collections.abc import Callable

from fastapi.testclient import TestClient

URL = re.compile(r"""https?://[^\s"'<>)]+""")
REFERENCE = re.compile(r"""(?:src|href)=["']([^"']+)["']|url:\s*['"]([^'"]+)['"]""")


def test_docs_page_references_only_local_assets(client: TestClient) -> None:
    """/docs names no outside URL and every asset it references loads here."""
    page = client.get("/docs")

    references = [a or b for a, b in REFERENCE.findall(page.text)]
    assert page.status_code == 200
    assert URL.findall(page.text) == []
    assert len(references) >= 4  # css, icon, script, openapi.json
    for reference in references:
        assert reference.startswith("/"), reference
        assert client.get(reference).status_code == 200, reference


def test_validator_badge_disabled(client: TestClient) -> None:
    """The online spec validator (validator.swagger.io) is switched off."""
    page = client.get("/docs").text

    assert '"validatorUrl": null' in page


def test_openapi_documents_both_upload_shapes(client: TestClient) -> None:
    """The schema lists multipart and raw DICOM / PNG / JPEG bodies for classify."""
    schema = client.get("/openapi.json").json()

    content = schema["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert set(content) == {
        "multipart/form-data",
        "application/dicom",
        "image/png",
        "image/jpeg",
    }
    assert "/v1/classify/batch" in schema["paths"]
    assert "ClassifyResponse" in schema["components"]["schemas"]


def test_docs_can_be_turned_off(make_client: Callable[..., TestClient]) -> None:
    """VLKD_DOCS_ENABLED=false removes the page and its assets."""
    client = make_client(docs_enabled=False)

    assert client.get("/docs").status_code == 404
    assert client.get("/docs/assets/swagger-ui.css").status_code == 404


def test_bundle_demo_pages_not_served(client: TestClient) -> None:
    """The bundle's demo page and initializer (petstore URL) are not reachable."""
    for name in ("index.html", "swagger-initializer.js", "../__init__.py"):
        assert client.get(f"/docs/assets/{name}").status_code == 404, name
