"""Optional API keys: /v1/* needs one when configured; probes stay open."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from app.auth import key_matches

KEY = "k3y-for-tests-0123456789"


@pytest.fixture
def keyed(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(api_keys=[KEY, "another-key-abcdefgh"])


def test_v1_without_key_gets_401(keyed: TestClient) -> None:
    """No key: 401 with a WWW-Authenticate header and JSON detail."""
    response = keyed.get("/v1/model")

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "API key" in response.json()["detail"]


def test_wrong_key_gets_401(keyed: TestClient) -> None:
    """A wrong key (even a prefix of a real one) gets 401."""
    assert keyed.get("/v1/model", headers={"x-api-key": KEY[:-1]}).status_code == 401
    assert keyed.post("/v1/classify", headers={"x-api-key": "nope"}).status_code == 401


@pytest.mark.parametrize(
    "headers", [{"x-api-key": KEY}, {"authorization": f"Bearer {KEY}"}]
)
def test_valid_key_accepted_either_header(
    keyed: TestClient, headers: dict[str, str]
) -> None:
    """A configured key works in X-API-Key and as a Bearer token."""
    response = keyed.get("/v1/model", headers=headers)

    assert response.status_code == 200


def test_probes_and_metrics_open_with_keys(keyed: TestClient) -> None:
    """Health, readiness, metrics and docs need no key."""
    for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
        assert keyed.get(path).status_code == 200, path


def test_no_keys_means_open(client: TestClient) -> None:
    """Without configured keys /v1/* is open."""
    assert client.get("/v1/model").status_code == 200


def test_key_matches_checks_every_key() -> None:
    """Matching finds a key anywhere in the list and rejects near misses."""
    keys = ["a" * 16, "b" * 16]

    assert key_matches("b" * 16, keys)
    assert not key_matches("b" * 15, keys)
    assert not key_matches("", keys)
