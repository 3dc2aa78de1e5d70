"""schemathesis against the running service's own OpenAPI schema: never a 5xx.

Every operation in ``/openapi.json`` gets generated requests (valid and
schema-violating ones: odd headers, bodies, media types) sent to a real
uvicorn on loopback serving the tiny test model. The example count is bounded
so the whole module stays under a minute.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings

from app.settings import Settings

MAX_EXAMPLES = 25


@pytest.fixture
def api_schema(live_server: Callable[..., str]) -> schemathesis.BaseSchema:
    """The schema the live service publishes, with that service as its base URL."""
    url = live_server(max_upload_bytes=2 * 1024 * 1024)

    return schemathesis.openapi.from_url(f"{url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_api_never_answers_5xx(case: schemathesis.Case) -> None:
    """No generated request, valid or not, makes the service answer 5xx."""
    response = case.call(timeout=30)

    assert response.status_code < 500, (
        f"{case.method} {case.path} -> {response.status_code}: {response.text[:200]}"
    )


def test_schema_lists_the_service_routes(api_schema: schemathesis.BaseSchema) -> None:
    """The schema tested above covers classify, batch, model and the probes."""
    paths = {op.ok().path for op in api_schema.get_all_operations()}

    assert {"/v1/classify", "/v1/classify/batch", "/v1/model", "/healthz"} <= paths
    assert Settings.model_fields["max_upload_bytes"].default > 2 * 1024 * 1024
