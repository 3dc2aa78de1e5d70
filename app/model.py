"""Load the ONNX model, check it against its contract, and prove it works.

At start-up the service reads the model file once, hashes it (optionally
against a pinned sha256), reads the vlkd contract from its metadata, checks its
ONNX IR version and opset against the installed onnxruntime, creates the one
inference session of this process, and runs a self-test: a batch of two images
must give the same outputs as the two images one at a time. Any failure raises
:class:`app.errors.ModelError` with a one-line reason and the service does not
start.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.contract import ModelContract, from_metadata
from app.errors import ContractError, ModelError
from app.gate import content_reasons
from app.preprocess import preprocess

logger = logging.getLogger(__name__)

SELF_TEST_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ModelOutputs:
    """What one run returns: raw logits ``(N, C)`` and optional features ``(N, F)``."""

    logits: np.ndarray
    features: np.ndarray | None


@dataclass
class LoadedModel:
    """The process's one inference session with the contract it was checked against."""

    session: ort.InferenceSession
    contract: ModelContract
    sha256: str
    ir_version: int
    opset: int
    intra_op_threads: int

    def run(self, batch: np.ndarray) -> ModelOutputs:
        """Run a float32 ``(N, 3, S, S)`` batch; outputs read by contract names."""
        names = [self.contract.logits_output]
        if self.contract.features_output:
            names.append(self.contract.features_output)

        try:
            results = self.session.run(names, {self.contract.input_name: batch})
        except Exception as error:  # onnxruntime raises its own untyped errors
            raise ModelError(f"inference failed: {type(error).__name__}") from error

        features = results[1] if len(results) > 1 else None

        return ModelOutputs(logits=np.asarray(results[0]), features=features)


# --- reading the model file's header without the onnx package ---------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ModelError("model file is not a valid ONNX protobuf")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """Top-level protobuf fields of ``data`` as (number, value) pairs."""
    fields: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            fields.append((number, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ModelError("model file is truncated or not an ONNX model")
            fields.append((number, data[pos : pos + length]))
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ModelError("model file is not a valid ONNX protobuf")

    return fields


def read_versions(data: bytes) -> tuple[int, int]:
    """The model's ONNX IR version and its default-domain (``ai.onnx``) opset."""
    ir_version, opset = 0, 0
    for number, value in _fields(data):
        if number == 1 and isinstance(value, int):  # ModelProto.ir_version
            ir_version = value
        elif number == 8 and isinstance(value, bytes):  # ModelProto.opset_import
            domain, version = b"", 0
            for sub_number, sub_value in _fields(value):
                if sub_number == 1 and isinstance(sub_value, bytes):
                    domain = sub_value
                elif sub_number == 2 and isinstance(sub_value, int):
                    version = sub_value
            if domain in (b"", b"ai.onnx"):
                opset = version

    if ir_version <= 0 or opset <= 0:
        raise ModelError(
            "model file has no ONNX IR version or no ai.onnx opset: not an ONNX model"
        )

    return ir_version, opset


def _version_message(error: Exception, ir_version: int, opset: int) -> str | None:
    """A clear message when onnxruntime refuses the model's IR version or opset."""
    text = str(error)
    max_ir = re.search(r"max supported IR version: (\d+)", text)
    max_opset = re.search(r"ai\.onnx is till opset (\d+)", text)
    if not (max_ir or max_opset or "opset" in text.lower()):
        return None

    limits = []
    if max_ir:
        limits.append(f"IR version <= {max_ir.group(1)}")
    if max_opset:
        limits.append(f"opset <= {max_opset.group(1)}")
    supported = " and ".join(limits) or "an older IR version / opset"

    return (
        f"model uses ONNX IR version {ir_version}, opset {opset}; the installed "
        f"onnxruntime {ort.__version__} supports {supported}: re-export the model "
        "or upgrade onnxruntime"
    )


# --- loading ----------------------------------------------------------------


def _session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: keep start-up output to our lines

    return options


def _check_signature(session: ort.InferenceSession, contract: ModelContract) -> None:
    """The graph must have the input and outputs the contract names."""
    inputs = {node.name: node for node in session.get_inputs()}
    if contract.input_name not in inputs:
        raise ContractError(
            f"contract names input {contract.input_name!r} but the model's inputs "
            f"are {sorted(inputs)}"
        )

    shape = inputs[contract.input_name].shape
    size = contract.preprocess.size
    expected = [None, 3, size, size]
    if len(shape) != 4 or any(
        isinstance(dim, int) and want is not None and dim != want
        for dim, want in zip(shape, expected, strict=False)
    ):
        raise ContractError(
            f"model input shape {shape} does not match the contract's (N, 3, {size}, "
            f"{size})"
        )
    if isinstance(shape[0], int):
        raise ContractError(
            f"model input has a fixed batch size of {shape[0]}; export it with a "
            "dynamic batch dimension"
        )

    outputs = {node.name for node in session.get_outputs()}
    named = [contract.logits_output, contract.features_output, contract.cam_output]
    missing = [name for name in named if name and name not in outputs]
    if missing:
        raise ContractError(
            f"contract names outputs {missing} that the model does not have "
            f"(it has {sorted(outputs)})"
        )


def load_model(
    path: Path, intra_op_threads: int, expected_sha256: str | None = None
) -> LoadedModel:
    """Read, verify and open the model at ``path``; raise ``ModelError`` if unusable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise ModelError(f"model file not found: {path}") from error
    except OSError as error:
        raise ModelError(f"model file unreadable: {path} ({error.strerror})") from error

    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 and digest != expected_sha256:
        raise ModelError(
            f"model sha256 is {digest}, but VLKD_MODEL_SHA256 pins {expected_sha256}"
        )

    ir_version, opset = read_versions(data)
    try:
        session = ort.InferenceSession(
            data,
            sess_options=_session_options(intra_op_threads),
            providers=["CPUExecutionProvider"],
        )
    except Exception as error:  # onnxruntime's pybind errors share no base class
        message = _version_message(error, ir_version, opset)
        raise ModelError(
            message or f"onnxruntime cannot load the model ({type(error).__name__})"
        ) from error

    contract = from_metadata(dict(session.get_modelmeta().custom_metadata_map))
    _check_signature(session, contract)
    logger.info(
        "model loaded: name=%s version=%s ir=%d opset=%d intra_op_threads=%d",
        contract.model_name,
        contract.model_version,
        ir_version,
        opset,
        intra_op_threads,
    )

    return LoadedModel(
        session=session,
        contract=contract,
        sha256=digest,
        ir_version=ir_version,
        opset=opset,
        intra_op_threads=intra_op_threads,
    )


# --- self-test ----------------------------------------------------------------


def _self_test_images() -> list[np.ndarray]:
    """Two different synthetic radiograph-like images (a gradient and a disc)."""
    y, x = np.mgrid[0:256, 0:224].astype(np.float32)
    gradient = x + 0.5 * y
    disc = ((x - 112) ** 2 + (y - 128) ** 2 < 80**2).astype(np.float32) * 1000 + y

    return [gradient, disc]


def self_test(model: LoadedModel) -> None:
    """Raise ``ModelError`` unless outputs are finite, shaped, and batch-consistent."""
    contract = model.contract
    tensors = [preprocess(image, contract.preprocess) for image in _self_test_images()]
    singles = [model.run(tensor[None]) for tensor in tensors]
    pair = model.run(np.stack(tensors))

    n_classes = len(contract.labels)
    if pair.logits.shape != (2, n_classes):
        raise ContractError(
            f"model logits have shape {pair.logits.shape}, expected (2, {n_classes}) "
            f"for a batch of 2 and {n_classes} labels"
        )
    if not np.all(np.isfinite(pair.logits)):
        raise ModelError("self-test failed: model logits are not finite")
    if pair.features is not None and pair.features.ndim != 2:
        raise ContractError(
            f"model features have shape {pair.features.shape}, expected (N, F)"
        )

    for index, single in enumerate(singles):
        if not np.allclose(
            single.logits[0],
            pair.logits[index],
            rtol=SELF_TEST_TOLERANCE,
            atol=SELF_TEST_TOLERANCE,
        ):
            raise ModelError(
                "self-test failed: a batch of 2 gives different logits than the same "
                "two images one at a time"
            )

    if contract.gate is not None:
        if pair.features is None:
            raise ContractError(
                "model has a not-assessable gate but no features output to score"
            )
        # Parse and score the gate now: a malformed gate refuses start-up
        # instead of failing every request.
        content_reasons(pair.features, contract.gate)

    logger.info("model self-test passed (batch of 2 equals two singles)")
