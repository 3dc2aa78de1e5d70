"""The contract a model file carries in its ONNX metadata, and its validation.

Training (``training.export``) writes it with :func:`to_metadata`; the service
reads it with :func:`from_metadata` and refuses to start when it is missing or
inconsistent. Every value is a string in ONNX ``metadata_props``; structured
values are JSON. Keys all start with ``vlkd.``:

=============================== ===============================================
key                             value
=============================== ===============================================
vlkd.contract_version           ``"1"``
vlkd.model_name                 e.g. ``"vlkd-mobilenetv2-kd"``
vlkd.model_version              e.g. ``"1.0.0"``
vlkd.labels                     JSON list, index order of the ``logits`` output
vlkd.input_size                 integer side in pixels (square input)
vlkd.normalization              JSON ``{"mean": [3 floats], "std": [3 floats]}``
vlkd.preprocess_version         must equal ``app.preprocess.PREPROCESS_VERSION``
vlkd.input_name                 graph input name (``"image"``)
vlkd.logits_output              graph output name of raw logits (``"logits"``)
vlkd.calibration_temperature    float > 0; probabilities = softmax(logits / t)
vlkd.card                       JSON model card (intended use, data, metrics, ...)
=============================== ===============================================

Optional keys: ``vlkd.cam_output`` (class activation maps, ``(N, C, h, w)``),
``vlkd.features_output`` (pooled features), ``vlkd.gate`` (JSON parameters of
the not-assessable gate), ``vlkd.teacher``, ``vlkd.kd_alpha``,
``vlkd.kd_temperature``, ``vlkd.training_data`` and ``vlkd.metrics`` (JSON).
Unknown ``vlkd.*`` keys are kept in ``extra`` so newer exports still load.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from app.errors import ContractError
from app.preprocess import PREPROCESS_VERSION, PreprocessConfig

CONTRACT_VERSION = "1"
PREFIX = "vlkd."

REQUIRED_KEYS = (
    "contract_version",
    "model_name",
    "model_version",
    "labels",
    "input_size",
    "normalization",
    "preprocess_version",
    "input_name",
    "logits_output",
)


@dataclass(frozen=True)
class ModelContract:
    """Everything the service needs to know about a model, read from its file."""

    model_name: str
    model_version: str
    labels: tuple[str, ...]
    preprocess: PreprocessConfig
    preprocess_version: str = PREPROCESS_VERSION
    input_name: str = "image"
    logits_output: str = "logits"
    cam_output: str | None = None
    features_output: str | None = None
    calibration_temperature: float = 1.0
    card: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] | None = None
    extra: dict[str, str] = field(default_factory=dict)


def to_metadata(contract: ModelContract) -> dict[str, str]:
    """Serialise a contract into ONNX ``metadata_props`` key / value strings."""
    values: dict[str, Any] = {
        "contract_version": CONTRACT_VERSION,
        "model_name": contract.model_name,
        "model_version": contract.model_version,
        "labels": json.dumps(list(contract.labels)),
        "input_size": str(contract.preprocess.size),
        "normalization": json.dumps(
            {
                "mean": list(contract.preprocess.mean),
                "std": list(contract.preprocess.std),
            }
        ),
        "preprocess_version": contract.preprocess_version,
        "input_name": contract.input_name,
        "logits_output": contract.logits_output,
        "calibration_temperature": repr(float(contract.calibration_temperature)),
        "card": json.dumps(contract.card, sort_keys=True),
    }
    if contract.cam_output:
        values["cam_output"] = contract.cam_output
    if contract.features_output:
        values["features_output"] = contract.features_output
    if contract.gate is not None:
        values["gate"] = json.dumps(contract.gate, sort_keys=True)

    metadata = {PREFIX + key: str(value) for key, value in values.items()}
    metadata.update(contract.extra)

    return metadata


def _json(raw: dict[str, str], key: str) -> Any:
    try:
        return json.loads(raw[key])
    except (json.JSONDecodeError, TypeError) as error:
        raise ContractError(
            f"model metadata '{PREFIX}{key}' is not valid JSON"
        ) from error


def from_metadata(metadata: dict[str, str]) -> ModelContract:
    """Parse and validate the contract; raise :class:`ContractError` if unusable."""
    raw = {k[len(PREFIX) :]: v for k, v in metadata.items() if k.startswith(PREFIX)}
    missing = [PREFIX + key for key in REQUIRED_KEYS if key not in raw]
    if missing:
        raise ContractError(
            "model has no vlkd contract: metadata keys missing: " + ", ".join(missing)
        )

    if raw["contract_version"] != CONTRACT_VERSION:
        raise ContractError(
            f"model contract version {raw['contract_version']!r} is not supported "
            f"(this service reads version {CONTRACT_VERSION!r})"
        )
    if raw["preprocess_version"] != PREPROCESS_VERSION:
        raise ContractError(
            f"model expects preprocessing {raw['preprocess_version']!r} but this "
            f"service implements {PREPROCESS_VERSION!r}"
        )

    labels = _json(raw, "labels")
    if (
        not isinstance(labels, list)
        or len(labels) < 2
        or not all(isinstance(label, str) and label for label in labels)
        or len(set(labels)) != len(labels)
    ):
        raise ContractError(
            "model labels must be a list of at least two distinct names"
        )

    try:
        size = int(raw["input_size"])
        norm = _json(raw, "normalization")
        preprocess = PreprocessConfig(
            size=size,
            mean=tuple(float(v) for v in norm["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in norm["std"]),  # type: ignore[arg-type]
        )
        temperature = float(raw.get("calibration_temperature", "1.0"))
    except (KeyError, TypeError, ValueError) as error:
        raise ContractError(f"model input contract is invalid: {error}") from error
    if not math.isfinite(temperature) or temperature <= 0:
        raise ContractError(
            f"calibration temperature must be a positive number, got {temperature}"
        )

    card = _json(raw, "card") if "card" in raw else {}
    gate = _json(raw, "gate") if "gate" in raw else None
    known = {*REQUIRED_KEYS, "calibration_temperature", "card", "gate"}
    known |= {"cam_output", "features_output"}

    return ModelContract(
        model_name=raw["model_name"],
        model_version=raw["model_version"],
        labels=tuple(labels),
        preprocess=preprocess,
        preprocess_version=raw["preprocess_version"],
        input_name=raw["input_name"],
        logits_output=raw["logits_output"],
        cam_output=raw.get("cam_output"),
        features_output=raw.get("features_output"),
        calibration_temperature=temperature,
        card=card if isinstance(card, dict) else {},
        gate=gate if isinstance(gate, dict) else None,
        extra={PREFIX + k: v for k, v in raw.items() if k not in known},
    )
