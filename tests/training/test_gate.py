"""Fitting the content gate, its probes, the command, and the shipped model's gate."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from app.contract import from_metadata
from app.decode import decode
from app.errors import UnprocessableImageError
from app.gate import compiled_gate, parse_gate
from tests.model_factory import write_model
from training.errors import DataError
from training.gate import (
    SPLITS,
    fit_gate,
    main,
    open_model,
    rejection_rate,
    split_payloads,
    synthetic_probes,
    with_threshold,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
# The shipped model, or another gated model for a local check.
SHIPPED_MODEL = Path(
    os.environ.get("VLKD_TEST_GATED_MODEL", REPO_ROOT / "models" / "vlkd-student.onnx")
)
MAX_TEST_REJECTION = 0.05


def _low_rank_features(n: int, seed: int, f: int = 64, k: int = 4) -> np.ndarray:
    """Non-negative features that vary mostly along k fixed directions."""
    rng = np.random.default_rng(1234)  # the same axes for every call
    axes = rng.normal(0, 1, (k, f))
    base = rng.uniform(1, 2, f)
    draws = np.random.default_rng(seed)
    coords = draws.normal(0, 0.3, (n, k))
    noise = draws.normal(0, 0.02, (n, f))

    return np.maximum(base + coords @ axes * 0.1 + noise, 0)


def _gate_stored_json(gate_json: dict[str, object]) -> dict[str, object]:
    return json.loads(json.dumps(gate_json))


def _shipped_contract_gate() -> dict[str, object]:
    if not SHIPPED_MODEL.is_file():
        pytest.skip(f"{SHIPPED_MODEL} does not exist yet")
    session = ort.InferenceSession(str(SHIPPED_MODEL))
    contract = from_metadata(session.get_modelmeta().custom_metadata_map)
    assert contract.gate is not None, (
        f"{SHIPPED_MODEL.name} has no vlkd.gate: run python -m training.gate "
        f"--model {SHIPPED_MODEL} after every export"
    )

    return contract.gate


# --- fitting -------------------------------------------------------------------


def test_fit_gate_threshold_rejects_about_the_val_tail() -> None:
    """A threshold at the val 0.95 quantile rejects about 5 % of fresh in-data."""
    train = _low_rank_features(400, 1)
    val = _low_rank_features(400, 2)
    fresh = _low_rank_features(2000, 3)

    gate = with_threshold(fit_gate(train, 4, "none"), val, 0.95)

    assert rejection_rate(gate, val) == pytest.approx(0.05, abs=0.01)
    assert 0.01 <= rejection_rate(gate, fresh) <= 0.12


@pytest.mark.parametrize("transform", ["none", "sqrt-l2"])
def test_fit_gate_refuses_features_off_the_training_subspace(transform: str) -> None:
    """Features with energy along new directions are all gated out."""
    train = _low_rank_features(400, 1)
    val = _low_rank_features(200, 2)
    shifted = _low_rank_features(50, 4).copy()
    shifted[:, ::2] *= 3  # every second activation triples: a new direction

    gate = with_threshold(fit_gate(train, 4, transform), val, 0.98)

    assert rejection_rate(gate, shifted) == 1.0


def test_fitted_gate_survives_the_contract_round_trip() -> None:
    """The gate read back from its JSON gives the distances the fit measured."""
    train = _low_rank_features(300, 1)
    val = _low_rank_features(100, 2)
    gate = with_threshold(fit_gate(train, 4), val, 0.98)

    stored = parse_gate(_gate_stored_json(gate.to_json()))

    np.testing.assert_allclose(stored.distance(val), gate.distance(val), rtol=1e-6)
    assert stored.threshold == gate.threshold


@pytest.mark.parametrize("k", [0, 64, 300])
def test_fit_gate_refuses_impossible_component_counts(k: int) -> None:
    """k must leave at least one discarded direction and be below the image count."""
    train = _low_rank_features(100, 1)

    with pytest.raises(DataError, match="n_components"):
        fit_gate(train, k)


def test_gate_json_stays_compact_for_mobilenet_features() -> None:
    """A 1280-feature, 16-component gate stores in under 100 kB of JSON."""
    rng = np.random.default_rng(0)
    train = rng.uniform(0, 1, (100, 1280))

    gate = with_threshold(fit_gate(train, 16), train[:50], 0.98)

    assert len(json.dumps(gate.to_json())) < 100_000


# --- probes ----------------------------------------------------------------------


def test_synthetic_probes_decode_as_images() -> None:
    """Every synthetic probe passes decoding, so only the gate can stop it."""
    probes = synthetic_probes()

    decoded = {name: decode(data) for name, data in probes.items()}

    assert set(decoded) == {"photograph", "noise", "near_uniform_grey", "grey_gradient"}
    assert decoded["photograph"].header["mode"] == "RGB"
    assert all(image.pixels.ndim == 2 for image in decoded.values())


def test_exactly_uniform_grey_is_rejected_by_decode() -> None:
    """A perfectly uniform image never reaches the gate: decoding refuses it (422)."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((256, 256), 128, dtype=np.uint8)).save(buffer, "PNG")

    with pytest.raises(UnprocessableImageError, match="blank or constant"):
        decode(buffer.getvalue())


# --- the command ---------------------------------------------------------------------


def _small_manifest(shared_data: Path, out: Path, per_split: int = 12) -> Path:
    """A manifest with the first rows of each split, as absolute image paths."""
    source = shared_data / "cxr3" / "manifest.csv"
    with source.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    kept = []
    for split in SPLITS:
        in_split = [row for row in rows if row["split"] == split and row["label"]]
        for row in in_split[:per_split]:
            kept.append(row | {"image": str(source.parent / row["image"])})

    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)

    return out


def test_main_writes_a_gate_the_service_reads(
    shared_data: Path, tmp_path: Path
) -> None:
    """The command stores vlkd.gate; the contract parses and the gate scores."""
    model = write_model(tmp_path / "tiny.onnx")
    manifest = _small_manifest(shared_data, tmp_path / "manifest.csv")
    report = tmp_path / "gate.json"

    status = main(
        [
            "--model", str(model), "--manifest", str(manifest),
            "--shared-data", str(shared_data), "--components", "3",
            "--val-quantile", "0.9", "--max-test-rejection", "1.0",
            "--report", str(report),
        ]
    )  # fmt: skip

    session = ort.InferenceSession(str(model))
    contract = from_metadata(session.get_modelmeta().custom_metadata_map)
    assert status == 0
    assert contract.gate is not None
    assert compiled_gate(contract.gate).basis.shape == (3, 8)
    measured = json.loads(report.read_text())
    assert set(measured["rejection"]) == set(SPLITS)
    assert set(measured["synthetic"]) >= {"photograph", "noise"}
    assert len(measured["non_chest_without_header"]) == 2
    assert len(measured["pediatric"]) == 8


def test_main_writes_nothing_when_test_rejection_is_too_high(
    shared_data: Path, tmp_path: Path
) -> None:
    """Over the allowed test rejection the command fails and leaves the model as is."""
    model = write_model(tmp_path / "tiny.onnx")
    before = model.read_bytes()
    manifest = _small_manifest(shared_data, tmp_path / "manifest.csv", per_split=8)

    status = main(
        [
            "--model", str(model), "--manifest", str(manifest),
            "--shared-data", str(tmp_path), "--components", "3",
            "--val-quantile", "0.5", "--max-test-rejection", "0.0",
        ]
    )  # fmt: skip

    assert status == 1
    assert model.read_bytes() == before


# --- the shipped model ---------------------------------------------------------------


def test_shipped_gate_keeps_test_split_chest_xrays(shared_data: Path) -> None:
    """At most 5 % of the real test split is gated out by the shipped model (~5 s)."""
    gate = parse_gate(_shipped_contract_gate())
    model = open_model(SHIPPED_MODEL)
    manifest = shared_data / "cxr3" / "manifest.csv"

    _, features = model.embed(split_payloads(manifest, "test", model.contract.labels))

    assert len(features) == 177
    assert rejection_rate(gate, features) <= MAX_TEST_REJECTION
