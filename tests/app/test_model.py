"""Model loading: contract, sha256 pin, IR / opset check, self-test (issue 6, 15)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from app.contract import to_metadata
from app.errors import ContractError, ModelError
from app.model import ModelOutputs, load_model, read_versions, self_test
from tests.model_factory import (
    build_model,
    default_contract,
    write_corrupt,
    write_model,
    write_without_contract,
    write_wrong_preprocess_version,
)


def test_valid_model_loads_with_contract(model_path: Path) -> None:
    """A factory model loads; its contract, hash and versions are read."""
    model = load_model(model_path, intra_op_threads=1)

    assert model.contract.labels == ("normal", "pneumonia", "nodule")
    assert model.sha256 == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert (model.ir_version, model.opset) == (8, 17)


def test_read_versions_matches_onnx(tmp_path: Path) -> None:
    """The header reader finds the IR version and opset onnx wrote."""
    data = build_model(ir_version=7, opset=13).SerializeToString()

    assert read_versions(data) == (7, 13)


@pytest.mark.parametrize(
    ("writer", "expected"),
    [
        (write_without_contract, "no vlkd contract"),
        (write_wrong_preprocess_version, "preprocessing"),
        (write_corrupt, "onnx"),
    ],
)
def test_unusable_model_refused_with_reason(
    tmp_path: Path, writer: object, expected: str
) -> None:
    """No contract, wrong preprocessing or a corrupt file give a one-line reason."""
    path = writer(tmp_path / "bad.onnx")  # type: ignore[operator]

    with pytest.raises(ModelError) as caught:
        load_model(path, intra_op_threads=1)

    assert expected in caught.value.detail.lower()
    assert "\n" not in caught.value.detail


def test_missing_file_refused(tmp_path: Path) -> None:
    """A path with no file raises ModelError naming the path."""
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "absent.onnx", intra_op_threads=1)


def test_sha256_pin_mismatch_refused(model_path: Path) -> None:
    """A pinned sha256 that differs from the file's refuses the model."""
    with pytest.raises(ModelError, match="sha256"):
        load_model(model_path, intra_op_threads=1, expected_sha256="0" * 64)


def test_unsupported_ir_version_gets_clear_message(tmp_path: Path) -> None:
    """IR version 99 is refused naming the model's and onnxruntime's versions."""
    path = write_model(tmp_path / "ir99.onnx", ir_version=99)

    with pytest.raises(ModelError) as caught:
        load_model(path, intra_op_threads=1)

    assert "IR version 99" in caught.value.detail
    assert ort.__version__ in caught.value.detail
    assert "supports IR version <=" in caught.value.detail


def test_unsupported_opset_gets_clear_message(tmp_path: Path) -> None:
    """Opset 99 is refused naming the opset and what onnxruntime supports."""
    path = write_model(tmp_path / "op99.onnx", opset=99)

    with pytest.raises(ModelError) as caught:
        load_model(path, intra_op_threads=1)

    assert "opset 99" in caught.value.detail
    assert ort.__version__ in caught.value.detail


def test_fixed_batch_model_refused(tmp_path: Path) -> None:
    """A model exported with batch size 1 is refused: batching needs a dynamic N."""
    path = write_model(tmp_path / "fixed.onnx", fixed_batch=True)

    with pytest.raises(ContractError, match="dynamic batch"):
        load_model(path, intra_op_threads=1)


def test_contract_output_missing_from_graph_refused(tmp_path: Path) -> None:
    """A contract naming a CAM output the graph lacks is refused."""
    metadata = to_metadata(default_contract(with_cam=True))
    path = write_model(tmp_path / "nocam.onnx", with_cam=False, metadata=metadata)

    with pytest.raises(ContractError, match="cam"):
        load_model(path, intra_op_threads=1)


def test_input_size_mismatch_refused(tmp_path: Path) -> None:
    """A contract size that differs from the graph's input size is refused."""
    metadata = to_metadata(default_contract(size=64))
    path = write_model(tmp_path / "size.onnx", size=32, metadata=metadata)

    with pytest.raises(ContractError, match="input shape"):
        load_model(path, intra_op_threads=1)


def test_self_test_passes_on_consistent_model(tmp_path: Path) -> None:
    """A model with logits only (no features, no CAM) passes the self-test."""
    path = write_model(tmp_path / "logits.onnx", with_features=False)
    model = load_model(path, intra_op_threads=1)

    self_test(model)

    assert model.contract.features_output is None


def test_self_test_catches_batch_inconsistency(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model whose batch of 2 differs from two singles fails the self-test."""
    model = load_model(model_path, intra_op_threads=1)
    real_run = model.run

    def skewed(batch: np.ndarray) -> ModelOutputs:
        outputs = real_run(batch)
        if len(batch) == 2:
            return ModelOutputs(outputs.logits + 0.5, outputs.features)
        return outputs

    monkeypatch.setattr(model, "run", skewed)

    with pytest.raises(ModelError, match="batch of 2"):
        self_test(model)


def test_self_test_refuses_malformed_gate(tmp_path: Path) -> None:
    """A model whose not-assessable gate cannot be parsed is refused at start-up."""
    broken_gate = {"kind": "ppca-mahalanobis", "format": 1, "mean": "not base64!"}
    path = write_model(
        tmp_path / "gate.onnx", contract=default_contract(gate=broken_gate)
    )
    model = load_model(path, intra_op_threads=1)

    with pytest.raises(ContractError):
        self_test(model)


def test_model_with_cam_output_serves_logits_and_features(tmp_path: Path) -> None:
    """Optional outputs are read by name; a CAM output does not disturb logits."""
    path = write_model(tmp_path / "cam.onnx", with_cam=True)
    model = load_model(path, intra_op_threads=1)

    outputs = model.run(np.zeros((3, 3, 32, 32), dtype=np.float32))

    assert outputs.logits.shape == (3, 3)
    assert outputs.features is not None and outputs.features.shape == (3, 8)
