"""schemathesis against the running service's own OpenAPI schema: never a 5xx.

Every operation in ``/openapi.json`` gets generated requests, valid ones and
schema-violating ones (wrong types, odd headers, bodies and media types), sent
to a real uvicorn on loopback serving the tiny test model. The example count is
bounded so the whole module stays well under a minute.

schemathesis's lazy pytest integration (``schemathesis.pytest.from_fixture``)
fails on pytest 9 (it reads the removed ``Function._nodeid``), so the
operations' Hypothesis strategies are driven directly with ``@given``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Err

EXAMPLES_PER_OPERATION = 50
EXPECTED_PATHS = {"/v1/classify", "/v1/classify/batch", "/v1/model", "/healthz"}


def _operations(url: str) -> list[schemathesis.APIOperation]:
    """Every operation of the live schema; an unparsable one fails the test."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise AssertionError(f"the OpenAPI schema is invalid: {result.err()}")
        operations.append(result.ok())

    return operations


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_never_answers_5xx(
    live_server: Callable[..., str], mode: GenerationMode
) -> None:
    """No generated request to any operation makes the service answer 5xx."""
    url = live_server(max_upload_bytes=2 * 1024 * 1024)
    operations = _operations(url)
    failures: list[str] = []
    unsatisfiable: list[str] = []
    statuses: list[int] = []

    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=url, timeout=30)
            statuses.append(response.status_code)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}"
                )

        try:
            check()
        except Unsatisfiable:
            # No parameters and no body (e.g. GET /healthz): nothing to violate.
            assert mode is GenerationMode.NEGATIVE
            unsatisfiable.append(operation.path)

    assert {operation.path for operation in operations} >= EXPECTED_PATHS
    assert failures == []
    assert (
        not EXPECTED_PATHS & {"/v1/classify", "/v1/classify/batch"} & set(unsatisfiable)
    )
