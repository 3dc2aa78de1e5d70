"""The not-assessable gate: header rules and the content gate's scoring."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from app.decode import DecodedImage
from app.errors import ContractError
from app.gate import (
    REASON_BODY_PART,
    REASON_CONTENT,
    REASON_MODALITY,
    REASON_VIEW,
    ContentGate,
    assess,
    compiled_gate,
    content_reasons,
    header_reasons,
    parse_gate,
    transform_features,
)
from tests.model_factory import default_contract


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({"modality": "CR", "body_part": "CHEST", "view_position": "PA"}, []),
        ({"modality": "DX", "body_part": "chest", "view_position": "AP"}, []),
        ({}, []),
        ({"modality": "MR"}, [REASON_MODALITY]),
        ({"modality": "CR", "body_part": "HIP"}, [REASON_BODY_PART]),
        ({"modality": "CR", "body_part": "HAND"}, [REASON_BODY_PART]),
        ({"modality": "CR", "body_part": "EXTREMITY"}, [REASON_BODY_PART]),
        ({"modality": "DX", "view_position": "LL"}, [REASON_VIEW]),
        ({"modality": "DX", "view_position": "LATERAL"}, [REASON_VIEW]),
        ({"modality": "CT", "body_part": "HEAD"}, [REASON_MODALITY, REASON_BODY_PART]),
    ],
)
def test_header_rules(header: dict[str, str], expected: list[str]) -> None:
    """Modality, body part and view position each give their fixed reason."""
    assert header_reasons(header) == expected


def test_content_gate_hook_inactive_without_gate() -> None:
    """Without a gate in the contract, the content hook gives no reason."""
    features = np.ones(8, dtype=np.float32)

    assert content_reasons(features, None) == []
    assert content_reasons(None, {"kind": "anything"}) == []


def test_assess_combines_header_reasons() -> None:
    """A decoded hip DICOM is not assessable, with the body-part reason."""
    decoded = DecodedImage(
        pixels=np.zeros((4, 4), dtype=np.float32),
        source_format="dicom",
        header={"modality": "CR", "body_part": "HIP"},
    )

    reasons = assess(decoded, np.zeros(8, dtype=np.float32), default_contract())

    assert reasons == [REASON_BODY_PART]


# --- the content gate --------------------------------------------------------------


def _gate(n_features: int = 12, k: int = 3, threshold: float = 5.0) -> ContentGate:
    """A gate whose Gaussian is centred on 1 with axes along the first k features."""
    basis = np.eye(k, n_features, dtype=np.float32)
    return ContentGate(
        mean=np.full(n_features, 1.0 / np.sqrt(n_features), dtype=np.float32),
        basis=basis,
        variances=np.full(k, 0.01, dtype=np.float32),
        residual_variance=1e-4,
        threshold=threshold,
        transform="none",
    )


def test_content_gate_passes_features_at_the_mean() -> None:
    """Features equal to the gate's mean are assessable."""
    gate = _gate()

    reasons = content_reasons(gate.mean.copy(), gate.to_json())

    assert reasons == []


def test_content_gate_refuses_features_off_the_subspace() -> None:
    """Features far outside the principal subspace get the content reason."""
    gate = _gate()
    features = gate.mean.copy()
    features[-1] += 0.5  # residual direction: 0.5**2 / 1e-4 = 2500, distance 50

    reasons = content_reasons(features, gate.to_json())

    assert reasons == [REASON_CONTENT]


def test_content_gate_refuses_non_finite_features() -> None:
    """NaN features are never assessable."""
    gate = _gate()
    features = gate.mean.copy()
    features[0] = np.nan

    assert content_reasons(features, gate.to_json()) == [REASON_CONTENT]


def test_content_gate_distance_matches_formula() -> None:
    """The distance is the probabilistic-PCA Mahalanobis distance."""
    gate = _gate()
    offset = np.zeros(12)
    offset[0], offset[5] = 0.2, 0.03
    expected = np.sqrt(0.2**2 / 0.01 + 0.03**2 / 1e-4)

    distance = gate.distance(gate.mean + offset)

    assert distance.shape == (1,)
    assert distance[0] == pytest.approx(expected, rel=1e-5)


def test_sqrt_l2_transform_ignores_overall_scale() -> None:
    """sqrt-l2 maps features and a positive multiple of them to the same point."""
    rng = np.random.default_rng(0)
    features = rng.uniform(0, 3, (2, 20))

    a = transform_features(features, "sqrt-l2")
    b = transform_features(features * 7.5, "sqrt-l2")

    np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0)


def test_gate_json_round_trip_keeps_distances() -> None:
    """A gate stored as JSON and parsed back scores features the same."""
    gate = _gate()
    features = np.random.default_rng(1).normal(0.3, 0.1, (5, 12))

    parsed = parse_gate(json.loads(json.dumps(gate.to_json())))

    np.testing.assert_allclose(parsed.distance(features), gate.distance(features))
    assert parsed.threshold == gate.threshold


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "knn"}, "not supported"),
        ({"format": 2}, "not supported"),
        ({"transform": "log"}, "transform"),
        ({"threshold": -1.0}, "positive"),
        ({"variances": [0.01, 0.0, 0.01]}, "positive"),
        ({"n_components": 12}, "n_components"),
        ({"mean": "not base64!"}, "base64"),
        ({"basis": "AAAA"}, "expected"),
    ],
)
def test_parse_gate_refuses_malformed_parameters(
    change: dict[str, Any], message: str
) -> None:
    """Each kind of malformed gate raises ContractError saying what is wrong."""
    bad = _gate().to_json() | change

    with pytest.raises(ContractError, match=message):
        parse_gate(bad)


def test_content_gate_refuses_features_of_another_length() -> None:
    """A gate fitted on another model's features raises ContractError, not a crash."""
    gate = _gate().to_json()

    with pytest.raises(ContractError, match="12 features"):
        content_reasons(np.ones(8, dtype=np.float32), gate)


def test_compiled_gate_parses_each_contract_once() -> None:
    """The same gate dict gives the same parsed object (no per-request parsing)."""
    gate = _gate().to_json()

    first = compiled_gate(gate)
    second = compiled_gate(gate)

    assert first is second


def test_assess_adds_content_reason_after_header_reasons() -> None:
    """A lateral view with garbage content lists both reasons, header first."""
    gate = _gate()
    features = gate.mean.copy()
    features[-1] += 1.0
    decoded = DecodedImage(
        pixels=np.zeros((4, 4), dtype=np.float32),
        source_format="dicom",
        header={"modality": "DX", "view_position": "LL"},
    )

    reasons = assess(decoded, features, default_contract(gate=gate.to_json()))

    assert reasons == [REASON_VIEW, REASON_CONTENT]
